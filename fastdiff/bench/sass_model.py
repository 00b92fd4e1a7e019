"""A throughput MODEL of a compiled Triton kernel from its SASS (not a measurement).

The model counts the warp-instructions of one loop body by execution pipe, turns them into SM
clocks per element with per-SM issue rates (:data:`TARGETS`), and compares the slowest pipe
(or the instruction issue) with the memory time of the kernel's minimum bytes at the card's copy
bandwidth. What it ignores: latency, occupancy, dependency stalls, register-bank conflicts,
memory-pipe back-pressure (MIO/LSU queues), caches, divergence and branch skips (every
instruction of a loop interval is counted once per iteration, predicated ones fully). It gives an
upper bound on what the code can reach, and says which pipe is the first wall.

Typical use (from a cubin of a real compile, see ``docs`` / the kernels brief)::

    instrs = parse(sass_text(cubin))
    for loop in loops(instrs):
        if loop.innermost:
            prof = loop_profile(instrs, loop, elements_per_iteration=4096, num_warps=8)
            print(ceiling(prof, bytes_per_element=2.0, target="sm_90"))

Units: a *warp-instruction* is one SASS instruction issued for one warp (32 threads). Per-pipe
rates are *lanes per clock per SM* (thread-instructions per clock per SM), so one
warp-instruction occupies a pipe for ``32 / lanes`` SM clocks, and the issue stage for
``1 / schedulers`` SM clocks (each of the 4 schedulers issues one warp-instruction per clock).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = [
    "CLASSES",
    "PIPES",
    "TARGETS",
    "Instr",
    "Loop",
    "ceiling",
    "classify",
    "loop_profile",
    "loops",
    "parse",
    "pipe_counts",
    "sass_text",
    "unknown_opcodes",
]

# --------------------------------------------------------------------------------------------
# Opcode classes
# --------------------------------------------------------------------------------------------
# Sources and choices (a model; what is uncertain is said next to each choice):
# * NVIDIA CUDA C++ Programming Guide, "Arithmetic Instructions", throughput table (results per
#   clock per SM; compute capability 8.0 and 9.0 columns): fp32 add/mul/fma 64 (8.0) / 128 (9.0);
#   fp64 32 / 64; fp32 rcp/rsqrt/lg2/ex2/sin/cos 16 / 16; 32-bit integer add/sub/shift/compare/
#   min/max/logic and multiply(-add) 64 / 64; population count, count leading zeros, bit
#   reverse 16 / 16; warp shuffle 32 / 32; most type conversions 16 / 16. These figures are the
#   project's kernel brief's and the author's reading of the Guide; they were not re-checked
#   against the Guide's current text from this machine.
# * IMAD: the Guide lists 32-bit integer multiply-add at 64/clk on 8.0 and 9.0, but NVIDIA
#   engineers describe the pipes as: GA100 (sm_80) "FMA pipe handles IMAD, IDP and FP32
#   operations"; GH100 (sm_90) "FMAheavy pipe handles IMAD, IDP and FP32; FMAlite handles FP32"
#   (forums.developer.nvidia.com/t/separate-cuda-core-pipeline-for-fp16-and-fp32/302018/7;
#   Nsight Compute's "fma" pipe description says the same). ptxas emits IMAD.MOV / IMAD.SHL /
#   IMAD.IADD precisely to move integer work off the ALU pipe. CHOICE: IMAD* and IDP are their
#   own class "imad" (64 lanes on both targets) and also load the shared FMA pipe together with
#   "fp32" (see ``shared`` in TARGETS): "int" below is the ALU pipe without IMAD.
# * "xu": Nsight Compute describes the XU pipe as doing both transcendentals (MUFU) and
#   int<->float conversions, so "mufu" and "conv" each have 16 lanes and also share 16 lanes
#   together (``shared["xu"]``). POPC / FLO / BREV are quarter-rate in the Guide (16/clk), so they
#   are put in "conv" (the XU class), not in "int".
# * HADD2 / HFMA2 / HMUL2 (fp16x2 / bf16x2) count as "fp32": right on sm_90 (dual-issued to
#   FMAheavy + FMAlite); on sm_80 they run on a separate fp16 pipe at 2x the fp32 rate, so the
#   model over-counts them there.
# * "uniform" (U* opcodes: the uniform datapath), "mov", "control" and "tensor" have no lane
#   limit in the model: they only take issue slots. Unknown opcodes go to "other": they take
#   issue slots, are listed by :func:`unknown_opcodes` and trigger a warning in loop_profile.

CLASSES: tuple[str, ...] = (
    "fp32",
    "int",
    "imad",
    "mufu",
    "conv",
    "fp64",
    "ldst",
    "shfl",
    "uniform",
    "control",
    "mov",
    "tensor",
    "other",
)

_OPCODES: dict[str, str] = {
    "fp32": (
        "FADD FADD32I FMUL FMUL32I FFMA FFMA32I FMNMX FSETP FSET FSEL FSWZADD FSWZ FCHK "
        "HADD2 HADD2_32I HMUL2 HMUL2_32I HFMA2 HFMA2_32I HSETP2 HSET2 HMNMX2 FMNMX3 FADD2 "
        "FMUL2 FFMA2"
    ),
    # ALU pipe. VIADD / VIMNMX (sm_90) are assumed ALU too (not documented).
    "int": (
        "IADD3 IADD IADD32I IADD64 ISCADD ISCADD32I LOP3 LOP LOP32I SHF SHL SHR ISETP ISET "
        "ICMP IMNMX IABS LEA SEL PRMT SGXT BMSK VIADD VIADDMNMX VIMNMX VIMNMX3 VABSDIFF "
        "VABSDIFF4 VOTE BFE BFI"
    ),
    "imad": "IMAD IMAD32I IMUL IMUL32I IMADSP IDP IDP4A XMAD",
    "mufu": "MUFU",
    "conv": "I2F I2FP F2I F2IP F2F F2FP I2I I2IP FRND POPC FLO BREV",
    "fp64": "DADD DMUL DFMA DSETP DMNMX DSET",
    "ldst": (
        "LDG STG LDS STS LDL STL LD ST LDC ATOM ATOMG ATOMS RED REDG REDAS LDSM STSM LDGSTS "
        "LDTRAM TLD TLD4 TEX TXQ TMML TXD SULD SUST SUATOM SURED CCTL CCTLL QSPC"
    ),
    # REDUX (warp reduce) is put with the shuffle (a cross-lane op; rate an assumption).
    "shfl": "SHFL REDUX MATCH",
    "control": (
        "BRA BRX BRXU JMP JMX CALL RET EXIT BAR BSYNC BSSY BREAK BPT WARPSYNC YIELD NOP DEPBAR "
        "MEMBAR ERRBAR KILL RTT NANOSLEEP FENCE SYNCS ARRIVES LDGDEPBAR ACQBULK WARPGROUP "
        "CGAERRBAR ENDCOLLECTIVE PMTRIG CSMTEST"
    ),
    "mov": (
        "MOV MOV32I S2R S2UR CS2R P2R R2P R2UR PLOP3 PSETP ELECT GETLMEMBASE SETLMEMBASE "
        "LEPC B2R R2B"
    ),
    "tensor": "HMMA IMMA DMMA BMMA HGMMA IGMMA QGMMA BGMMA WGMMA OMMA QMMA UTCMMA",
}

#: Base opcode -> class. A plain dict: callers may reassign an opcode (e.g. ``PIPES["FSEL"] =
#: "int"``) to try another pipe assignment; :func:`classify` reads it at call time.
PIPES: dict[str, str] = {op: cls for cls, ops in _OPCODES.items() for op in ops.split()}


def classify(opcode: str, pipes: Optional[dict[str, str]] = None) -> str:
    """Class of a SASS opcode (with or without modifiers): a key of :data:`CLASSES`.

    Lookup order: the full opcode (e.g. ``"IMAD.WIDE.U32"``), then its base (``"IMAD"``); a base
    starting with ``U`` that is not listed is the uniform datapath; anything else is ``"other"``.
    """
    table = PIPES if pipes is None else pipes
    if opcode in table:
        return table[opcode]
    base = opcode.split(".", 1)[0]
    if base in table:
        return table[base]
    if base.startswith("U"):
        return "uniform"
    return "other"


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
# H100 SXM5: 132 SMs (NVIDIA H100 Tensor Core GPU Architecture whitepaper); clock 1.98 GHz is
# the H100 SXM5 max boost clock (sustained clocks under load can be lower: 1.7-1.98 GHz; the
# model's clocks-per-element do not depend on it, only elements_per_second_model and the
# memory-clock conversion do). Copy bandwidth 3.0e12 B/s (read + write) is the measured copy
# figure of the project's brief, not the 3.35 TB/s HBM3 peak.
# A100 SXM4 80GB: 108 SMs, 1.41 GHz boost (NVIDIA A100 Tensor Core GPU Architecture
# whitepaper). Copy bandwidth 1.7e12 B/s is an ASSUMPTION (about 85 % of the 2.04 TB/s HBM2e
# peak), not measured here.
# Lanes per clock per SM from the Programming Guide's throughput table (see the class notes
# above); "ldst": one warp-instruction per clock per SM into the LSU/MIO (32 lanes), an
# assumption for the issue side of memory instructions only (bytes are the memory term).
# ``shared``: pipes that share hardware; the model adds their loads (in thread-instructions)
# and divides by the shared lanes.
TARGETS: dict[str, dict] = {
    "sm_90": {
        "name": "H100 SXM5",
        "sms": 132,
        "clock_hz": 1.98e9,
        "schedulers": 4,
        "copy_bw": 3.0e12,
        "lanes": {
            "fp32": 128,
            "int": 64,
            "imad": 64,
            "mufu": 16,
            "conv": 16,
            "fp64": 64,
            "ldst": 32,
            "shfl": 32,
        },
        # FMAheavy (64 lanes: IMAD + fp32) + FMAlite (64 lanes: fp32 only) = 128 lanes in all.
        "shared": {"fma": (("fp32", "imad"), 128), "xu": (("mufu", "conv"), 16)},
    },
    "sm_80": {
        "name": "A100 SXM4 80GB",
        "sms": 108,
        "clock_hz": 1.41e9,
        "schedulers": 4,
        "copy_bw": 1.7e12,
        "lanes": {
            "fp32": 64,
            "int": 64,
            "imad": 64,
            "mufu": 16,
            "conv": 16,
            "fp64": 32,
            "ldst": 32,
            "shfl": 32,
        },
        # One FMA pipe (64 lanes) for fp32 and IMAD.
        "shared": {"fma": (("fp32", "imad"), 64), "xu": (("mufu", "conv"), 16)},
    },
}

WARP = 32


# --------------------------------------------------------------------------------------------
# Disassembly and parsing
# --------------------------------------------------------------------------------------------
def _bin_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def sass_text(cubin: bytes, tool: str = "nvdisasm") -> str:
    """SASS text of a cubin, from the ``nvdisasm`` (default; ``nvdisasm -c``) or ``cuobjdump``
    (``cuobjdump -sass``) shipped in the triton wheel under ``triton/backends/nvidia/bin``.

    The cubin goes through a temporary file. If ``nvdisasm`` fails, ``cuobjdump`` is tried.
    Both outputs are accepted by :func:`parse`.
    """
    tools = {"nvdisasm": ["nvdisasm", "-c"], "cuobjdump": ["cuobjdump", "-sass"]}
    if tool not in tools:
        raise ValueError(f"tool must be one of {sorted(tools)}, got {tool!r}")
    order = [tool] + [t for t in tools if t != tool]
    bindir = _bin_dir()
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        for name in order:
            exe, *args = tools[name]
            cmd = [str(bindir / exe), *args, str(path)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError as exc:
                errors.append(f"{name}: {exc}")
                continue
            if res.returncode == 0 and _OFFSET_RE.search(res.stdout):
                return res.stdout
            errors.append(f"{name}: rc={res.returncode} {res.stderr.strip()[:300]}")
    raise RuntimeError("could not disassemble the cubin: " + "; ".join(errors))


@dataclass(frozen=True)
class Instr:
    """One SASS instruction.

    ``opcode`` has its modifiers (``"IMAD.WIDE.U32"``), ``base`` not (``"IMAD"``); ``guard`` is the
    predicate guard without ``@`` (``"P0"``, ``"!P3"``, ``"UP1"``) or None; ``target`` is the
    branch target offset of a BRA (None otherwise, or when it cannot be resolved);
    ``branch_kind`` is ``"conditional"`` (a guard other than ``PT``, or a predicate operand as in
    ``BRA.U !UP0, ...``) or ``"unconditional"`` for a BRA, None otherwise; ``function`` is the
    kernel the instruction belongs to ("" if the text names none).
    """

    offset: int
    opcode: str
    base: str
    guard: Optional[str] = None
    target: Optional[int] = None
    branch_kind: Optional[str] = None
    function: str = ""
    text: str = ""

    @property
    def pipe(self) -> str:
        """The class of the opcode (:func:`classify`)."""
        return classify(self.opcode)

    @property
    def backward(self) -> bool:
        """A BRA to a strictly lower offset (a loop's back edge)."""
        return self.base == "BRA" and self.target is not None and self.target < self.offset


_OFFSET_RE = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/(.*)$", re.MULTILINE)
_COMMENT_RE = re.compile(r"/\*.*?\*/")
_LABEL_RE = re.compile(r"^\s*([.$A-Za-z_][\w.$@]*):\s*(?://.*)?$")
_FUNC_CUOBJDUMP_RE = re.compile(r"^\s*Function\s*:\s*(\S+)")
_FUNC_NVDISASM_RE = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_GUARD_RE = re.compile(r"^@(!?U?P(?:T|\d+))\s+")
_OPCODE_RE = re.compile(r"^([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
_PRED_OPERAND_RE = re.compile(r"^!?U?P(?:\d+|T)$")


def _branch_target(operands: str) -> tuple[Optional[str], bool]:
    """(raw target token, has a predicate operand) of a BRA's operand text."""
    ops = [o.strip() for o in operands.split(",") if o.strip()]
    if not ops:
        return None, False
    has_pred = any(_PRED_OPERAND_RE.match(o) for o in ops[:-1])
    raw = ops[-1]
    m = re.search(r"`\(([^)]+)\)", raw)
    if m:
        return m.group(1), has_pred
    m = re.search(r"(0x[0-9a-fA-F]+)", raw)
    if m:
        return m.group(1), has_pred
    return raw, has_pred


def parse(text: str) -> list[Instr]:
    """One :class:`Instr` per SASS instruction of ``nvdisasm`` or ``cuobjdump -sass`` text.

    Instruction lines are the ones starting with an offset comment ``/*0a30*/``; encoding-only
    lines (``/* 0x000fe2... */``) and directives are skipped. Dual-issue pairs written in braces
    (``{ A ; ... B ; }``) give one entry per instruction. Branch targets are resolved from hex
    offsets (cuobjdump) or labels (nvdisasm: a label names the offset of the next instruction).
    """
    pending: list[tuple[int, str, str, Optional[str], str, str, Optional[str], bool]] = []
    labels: dict[tuple[str, str], int] = {}
    waiting_labels: list[str] = []
    function = ""
    for line in text.splitlines():
        fm = _FUNC_CUOBJDUMP_RE.match(line) or _FUNC_NVDISASM_RE.match(line)
        if fm:
            function = fm.group(1)
            waiting_labels = []
            continue
        om = _OFFSET_RE.match(line)
        if not om:
            lm = _LABEL_RE.match(line)
            if lm:
                waiting_labels.append(lm.group(1))
            continue
        offset = int(om.group(1), 16)
        body = _COMMENT_RE.sub(" ", om.group(2))
        body = body.replace("{", " ").replace("}", " ").strip()
        body = body.split(";", 1)[0].strip()
        if not body:
            continue
        guard = None
        gm = _GUARD_RE.match(body)
        if gm:
            guard = gm.group(1)
            body = body[gm.end() :].strip()
        opm = _OPCODE_RE.match(body)
        if not opm:
            continue
        for name in waiting_labels:
            labels[(function, name)] = offset
        waiting_labels = []
        opcode = opm.group(1)
        base = opcode.split(".", 1)[0]
        raw_target, has_pred = (None, False)
        if base == "BRA":
            raw_target, has_pred = _branch_target(body[opm.end() :])
        pending.append((offset, opcode, base, guard, function, body, raw_target, has_pred))

    out: list[Instr] = []
    for offset, opcode, base, guard, func, body, raw_target, has_pred in pending:
        target = None
        kind = None
        if base == "BRA":
            if raw_target is not None:
                if raw_target.startswith("0x"):
                    target = int(raw_target, 16)
                else:
                    target = labels.get((func, raw_target))
            conditional = (guard is not None and guard != "PT") or has_pred
            kind = "conditional" if conditional else "unconditional"
        out.append(Instr(offset, opcode, base, guard, target, kind, func, body))
    return out


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loop:
    """A loop: the offset interval [start, end] closed by backward branches to ``start``.

    ``start`` is the header (the branch target), ``end`` the offset of the last backward branch
    to it; ``instrs`` are the instructions of the function with start <= offset <= end (inner
    loops included); ``depth`` is 1 for an outermost loop, +1 per enclosing loop; ``innermost``
    is True when no other loop lies inside it; ``back_edges`` are the offsets of its backward
    branches.
    """

    function: str
    start: int
    end: int
    depth: int
    innermost: bool
    instrs: tuple[Instr, ...] = field(repr=False)
    back_edges: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.instrs)

    def counts(self) -> dict[str, int]:
        """Instructions of the body by class (:func:`pipe_counts`)."""
        return pipe_counts(self.instrs)


def loops(instrs: list[Instr]) -> list[Loop]:
    """Natural loops from backward branches (a BRA to a strictly lower offset, same function).

    Back edges to the same header merge into one loop ending at the last of them. Intervals are
    assumed properly nested (what structured code such as Triton's gives); depth counts the loops
    whose interval strictly contains this one's. A BRA to its own offset (the ``BRA`` self-loop
    that pads the end of a kernel) is not a loop. Sorted by (function, start).
    """
    ends: dict[tuple[str, int], list[int]] = {}
    for ins in instrs:
        if ins.backward:
            ends.setdefault((ins.function, ins.target), []).append(ins.offset)
    spans = sorted((f, s, max(e), tuple(sorted(e))) for (f, s), e in ends.items())
    result = []
    for func, start, end, edges in spans:
        enclosing = 0
        contains = False
        for f2, s2, e2, _ in spans:
            if f2 != func or (s2, e2) == (start, end):
                continue
            if s2 <= start and end <= e2:
                enclosing += 1
            if start <= s2 and e2 <= end:
                contains = True
        body = tuple(i for i in instrs if i.function == func and start <= i.offset <= end)
        result.append(Loop(func, start, end, enclosing + 1, not contains, body, edges))
    return result


# --------------------------------------------------------------------------------------------
# Counting and the model
# --------------------------------------------------------------------------------------------
def pipe_counts(instrs) -> dict[str, int]:
    """Number of instructions per class (every key of :data:`CLASSES`, zeros included)."""
    counts = dict.fromkeys(CLASSES, 0)
    for ins in instrs:
        counts[classify(ins.opcode)] += 1
    return counts


def unknown_opcodes(instrs) -> dict[str, int]:
    """Opcodes (with modifiers) classified ``"other"``, with their counts."""
    out: dict[str, int] = {}
    for ins in instrs:
        if classify(ins.opcode) == "other":
            out[ins.opcode] = out.get(ins.opcode, 0) + 1
    return out


def loop_profile(
    instrs: list[Instr], loop: Loop, *, elements_per_iteration: int, num_warps: int
) -> dict[str, float]:
    """Warp-instructions per element by class for one iteration of ``loop``.

    ``per_element[c] = count(c in loop body) * num_warps / elements_per_iteration``: every warp
    of the program runs the loop body once per iteration, and one iteration handles
    ``elements_per_iteration`` elements (e.g. BLOCK_V) spread over the program's warps.
    Predicated instructions count fully; inner loops' bodies count once. Unknown opcodes are
    counted under ``"other"`` and reported with a warning.
    """
    if elements_per_iteration <= 0 or num_warps <= 0:
        raise ValueError("elements_per_iteration and num_warps must be positive")
    body = (
        loop.instrs
        if loop.instrs
        else [
            i for i in instrs if i.function == loop.function and loop.start <= i.offset <= loop.end
        ]
    )
    unknown = unknown_opcodes(body)
    if unknown:
        warnings.warn(
            f"sass_model: opcodes not classified (counted as 'other'): {unknown}", stacklevel=2
        )
    scale = num_warps / elements_per_iteration
    return {c: n * scale for c, n in pipe_counts(body).items()}


def ceiling(per_element_by_pipe: dict[str, float], bytes_per_element: float, target: str) -> dict:
    """Model of the issue/pipe limit against the memory limit, in SM clocks per element.

    For each pipe ``p`` with a lane rate on ``target``:
    ``clocks[p] = per_element[p] * 32 / lanes[p]``; for each group of pipes sharing hardware
    (``"fma"`` = fp32 + imad, ``"xu"`` = mufu + conv):
    ``clocks[g] = sum(per_element[p] for p in g) * 32 / shared_lanes[g]``;
    ``clocks["issue"] = sum(per_element over all classes) / schedulers`` (4 per SM).
    ``compute_clocks = max(clocks.values())``;
    ``memory_clocks = bytes_per_element / copy_bw * sms * clock_hz`` (the per-SM clocks one
    element's bytes take when all SMs share the copy bandwidth);
    ``limiter`` = the argmax pipe, or ``"memory"`` when ``memory_clocks >= compute_clocks``;
    ``ceiling_fraction = min(1, memory_clocks / compute_clocks)`` (best fraction of copy
    bandwidth the code can reach); ``elements_per_second_model = sms * clock_hz /
    max(compute_clocks, memory_clocks)``.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    t = TARGETS[target]
    per = {c: float(per_element_by_pipe.get(c, 0.0)) for c in per_element_by_pipe}
    clocks: dict[str, float] = {}
    for pipe, lanes in t["lanes"].items():
        clocks[pipe] = per.get(pipe, 0.0) * WARP / lanes
    for group, (members, lanes) in t["shared"].items():
        clocks[group] = sum(per.get(m, 0.0) for m in members) * WARP / lanes
    clocks["issue"] = sum(per.values()) / t["schedulers"]
    limiter_pipe = max(clocks, key=lambda k: clocks[k])
    compute = clocks[limiter_pipe]
    memory = float(bytes_per_element) / t["copy_bw"] * t["sms"] * t["clock_hz"]
    limiter = "memory" if memory >= compute else limiter_pipe
    fraction = 1.0 if compute <= 0 else min(1.0, memory / compute)
    bound = max(compute, memory)
    eps = float("inf") if bound <= 0 else t["sms"] * t["clock_hz"] / bound
    return {
        "model": True,
        "target": target,
        "clocks_per_element": clocks,
        "compute_clocks": compute,
        "memory_clocks": memory,
        "limiter": limiter,
        "ceiling_fraction": fraction,
        "elements_per_second_model": eps,
    }
