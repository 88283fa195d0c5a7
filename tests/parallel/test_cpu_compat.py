"""The CPU bridge for megatron-core: each of its four promises, in a fresh process.

Run in a subprocess because the bridge is process-wide by design.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the bridge is for CPU-only hosts")


def run_python(launch, code: str) -> str:
    proc = launch.run("-c", textwrap.dedent(code), timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_device_requests_land_on_cpu(launch):
    out = run_python(launch, """
        import torch
        from megavid.parallel import cpu_compat
        assert cpu_compat.install() and cpu_compat.install()  # idempotent
        a = torch.zeros(3, device="cuda")
        b = torch.empty(2, device=torch.cuda.current_device())
        c = torch.ones(2).cuda()
        d = torch.ones(2).to("cuda:0")
        e = torch.tensor([1.0], device=torch.device("cuda", 0))
        print(a.device, b.device, c.device, d.device, e.device, torch.cuda.current_device())
    """)
    assert out.split() == ["cpu"] * 5 + ["0"]


def test_cuda_type_strings_and_streams(launch):
    out = run_python(launch, """
        import torch
        from megavid.parallel import cpu_compat
        cpu_compat.install()
        print(torch.ones(1).type(), torch.ones(1, dtype=torch.bfloat16).type())
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            pass
        ev = torch.cuda.Event(); ev.record(); torch.cuda.synchronize()
        print(torch.ones(2).type(torch.float64).dtype)  # the explicit form is untouched
    """)
    assert out.split() == ["torch.cuda.FloatTensor", "torch.cuda.BFloat16Tensor", "torch.float64"]


def test_model_parallel_rng_tracker_forks_the_cpu_generator(launch):
    out = run_python(launch, """
        import torch, torch.distributed as dist  # MASTER_PORT: a free port from the launcher
        from megavid.parallel import runtime
        runtime.init_distributed()
        runtime.init_model_parallel(tp=1, pp=1, vpp=None)
        runtime.set_seed(7)
        from megatron.core.tensor_parallel import get_cuda_rng_tracker
        before = torch.get_rng_state()
        with get_cuda_rng_tracker().fork():
            inside = torch.rand(3)
        assert torch.equal(before, torch.get_rng_state()), "fork must restore the default stream"
        with get_cuda_rng_tracker().fork():
            again = torch.rand(3)
        assert not torch.equal(inside, again), "the tracked stream must advance"
        torch.cuda.manual_seed(5); x = torch.rand(2); torch.manual_seed(5); y = torch.rand(2)
        print(torch.equal(x, y))
        runtime.shutdown()
    """)
    assert out.strip() == "True"
