"""The CPU bridge for megatron-core: each of its promises, in a fresh process.

Run in a subprocess because the bridge is process-wide by design: never in the test
process. One subprocess runs every section in turn (an interpreter with megatron-core
imported costs seconds) and reports each one's output or traceback on its own.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the bridge is for CPU-only hosts")


SECTIONS: dict[str, str] = {}  # name -> code, run in this order in one fresh process

RUNNER = """
import contextlib, io, json, sys, traceback
results = {}
for name, code in json.loads(sys.argv[1]).items():
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), {"__name__": name})
        results[name] = {"out": out.getvalue(), "error": None}
    except BaseException:
        results[name] = {"out": out.getvalue(), "error": traceback.format_exc()}
print("RESULTS " + json.dumps(results))
"""


def section(name: str, code: str) -> str:
    SECTIONS[name] = textwrap.dedent(code)
    return name


@pytest.fixture(scope="module")
def outputs(shared_launch) -> dict:
    proc = shared_launch.run("-c", RUNNER, json.dumps(SECTIONS), timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


def run_python(outputs: dict, name: str) -> str:
    result = outputs[name]
    assert result["error"] is None, result["error"]
    return result["out"]


DEVICES = section("devices", """
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


def test_device_requests_land_on_cpu(outputs):
    out = run_python(outputs, DEVICES)
    assert out.split() == ["cpu"] * 5 + ["0"]


TYPES_AND_STREAMS = section("types_and_streams", """
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


def test_cuda_type_strings_and_streams(outputs):
    out = run_python(outputs, TYPES_AND_STREAMS)
    assert out.split() == ["torch.cuda.FloatTensor", "torch.cuda.BFloat16Tensor", "torch.float64"]


RNG_TRACKER = section("rng_tracker", """
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


def test_model_parallel_rng_tracker_forks_the_cpu_generator(outputs):
    out = run_python(outputs, RNG_TRACKER)
    assert out.strip() == "True"
