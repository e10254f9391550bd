"""vit_dt.textable: aligned columns and compressed index lists."""
from vit_dt.textable import index_ranges


def test_index_ranges_compress_runs_and_keep_singles():
    assert index_ranges(range(125)) == "0-124"
    assert index_ranges([9, 0, 1, 2, 3, 7, 10, 3]) == "0-3,7,9-10"
    assert index_ranges([5]) == "5" and index_ranges([]) == ""
    assert index_ranges([4, 6]) == "4,6"
