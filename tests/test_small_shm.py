"""A small /dev/shm (docker's default 64 MB): big batches still load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import child_env

_SCRIPT = textwrap.dedent(
    """
    import warnings
    import torch
    from batchloader import DataLoader

    class Big:
        def __len__(self):
            return 48

        def __getitem__(self, i):
            return torch.full((3, 1024, 1024), float(i))  # 12 MiB a sample

    warnings.simplefilter("ignore", ResourceWarning)  # the one-time "pipe instead" notice
    for epoch in range(2):
        seen = [float(b[0, 0, 0, 0]) for b in DataLoader(Big(), batch_size=1, num_workers=2)]
        assert seen == [float(i) for i in range(48)], seen
    print("ok")
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a private /dev/shm needs root and unshare",
)
def test_twelve_megabyte_batches_load_with_a_64_megabyte_dev_shm():
    env = child_env()
    command = [
        "unshare", "-m", "sh", "-c",
        f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} -c '{_SCRIPT}'",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0 and "mount" in done.stderr and "permission" in done.stderr.lower():
        pytest.skip(f"cannot mount a private /dev/shm here: {done.stderr.strip()}")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
