"""``experiments/gpu/aot.py``'s counting: launches per run of an optimised HLO module, and how
many programs of a kernel an SM holds. The compile itself needs the CUDA plugin (not in CI)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def aot():
    spec = importlib.util.spec_from_file_location("aot", ROOT / "experiments" / "gpu" / "aot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HLO = """\
HloModule jit_f, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_add (param_0: s32[]) -> s32[] {
  %param_0 = s32[] parameter(0)
  %constant_1 = s32[] constant(1)
  ROOT %add.1 = s32[] add(%param_0, %constant_1)
}

%body (arg: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arg = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = f32[4]{0} get-tuple-element(%arg), index=1
  %kernel = (f32[4]{0}, f32[4]{0}) custom-call(%x), custom_call_target="__gpu$xla.gpu.triton"
  %y = f32[4]{0} get-tuple-element(%kernel), index=0
  %copy.1 = f32[4]{0} copy(%y)
  %next = s32[] fusion(%i), kind=kLoop, calls=%fused_add
  ROOT %tuple.1 = (s32[], f32[4]{0}) tuple(%next, %copy.1)
}

%fused_compare (param_0: s32[]) -> pred[] {
  %param_0 = s32[] parameter(0)
  %constant_5 = s32[] constant(5)
  ROOT %lt = pred[] compare(%param_0, %constant_5), direction=LT
}

%cond (arg: (s32[], f32[4])) -> pred[] {
  %arg = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  ROOT %less = pred[] fusion(%i), kind=kLoop, calls=%fused_compare
}

%small (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  ROOT %one = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_add
}

%large (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %first = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_add
  ROOT %second = f32[4]{0} copy(%first)
}

ENTRY %main (x.1: f32[4]) -> f32[4] {
  %x.1 = f32[4]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %x.1)
  %known = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %unknown = (s32[], f32[4]{0}) while(%known), condition=%cond, body=%body
  %out = f32[4]{0} get-tuple-element(%unknown), index=1
  %flag = pred[] constant(true)
  %either = f32[4]{0} conditional(%flag, %out, %out), true_computation=%small, false_computation=%large
  ROOT %neg = f32[4]{0} fusion(%either), kind=kLoop, calls=%fused_add, backend_config={"kind":"__custom_fusion"}
}
"""


def test_loop_bodies_count_once_per_iteration_and_free_instructions_not_at_all(aot):
    counts = aot.launches(HLO)
    # 5 iterations of the known loop, 1 counted for the unknown one (plus its condition),
    # the conditional's larger branch (a fusion and a copy)
    assert counts["__gpu$xla.gpu.triton"] == 6
    assert counts["copy"] == 6 + 1
    assert counts["fusion"] == 6 + 1 + 1  # the bodies' counter, the unknown loop's condition, the branch
    assert counts["__custom_fusion"] == 1
    assert counts[aot.SYNC_LOOP] == 1 and counts[aot.SYNC_BRANCH] == 1
    assert not {"parameter", "get-tuple-element", "tuple", "constant", "while", "conditional"} & set(counts)


def test_programs_per_sm_take_the_tightest_limit(aot):
    spec = (ROOT / "experiments" / "gpu" / "h100_sxm.txtpb").read_text()
    # registers: 235 -> 240 per thread, 7680 per warp, 8 warps: one 8-warp program in 65536
    assert aot.programs_per_sm(spec, registers=235, threads=256, smem=8192) == 1
    assert aot.programs_per_sm(spec, registers=118, threads=256, smem=61952) == 2
    # shared memory: 128 KiB + 1 KiB reserved, one per 228 KiB
    assert aot.programs_per_sm(spec, registers=32, threads=128, smem=131072) == 1
    # threads: 2048 per SM
    assert aot.programs_per_sm(spec, registers=8, threads=1024, smem=0) == 2
