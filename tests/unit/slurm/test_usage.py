"""GPU-hours used, from sacct's elapsed time x GPUs (requeued attempts included), against the sweep's estimate."""
from __future__ import annotations

from vit_dt.slurm.usage import HOW, Usage, parse_sacct

SACCT = """JobID|ElapsedRaw|AllocTRES
12_0|3600|billing=4,cpu=4,gres/gpu=4,mem=16G,node=1
12_1|1800|billing=1,cpu=1,gres/gpu:a40=1,mem=4G,node=1
12_1|900|billing=1,cpu=1,gres/gpu:a40=1,mem=4G,node=1
13|600|billing=2,cpu=2,mem=4G,node=2
14|Unknown|
"""


def test_parse_sacct_gives_every_attempt_its_elapsed_and_gpus():
    assert parse_sacct(SACCT) == {"12_0": [(3600, 4)], "12_1": [(1800, 1), (900, 1)], "13": [(600, None)]}


def test_the_status_line_sets_used_against_the_estimate():
    usage = Usage(used_hours={0: 4.0, 1: 0.75}, estimated_hours={0: 3.0, 1: 1.0, 2: 1.0}, units=("GPU-hours",))
    assert usage.line() == f"used: 4.75 of an estimated 5.00 GPU-hours, 95% {HOW}"
    assert usage.to_dict()["per_point"]["2"] == {"used": None, "estimated": 1.0}
    assert Usage({}, {}, ()).line() is None
    assert "no estimate" in Usage({0: 1.0}, {}, ()).line()
