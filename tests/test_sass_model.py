"""The SASS throughput model (fastdiff.bench.sass_model): parsing both disassembler syntaxes,
loop detection, the ceiling arithmetic, and one real compile for sm_90 (no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fastdiff.bench import sass_model as sm

# Two nested loops (header 0x20 around header 0x30), a forward branch, a second top-level loop
# whose body has a dual-issue pair in braces and an unknown opcode, and the padding self-loop.
NVDISASM = """
\t.target\tsm_90a
//--------------------- .text.k --------------------------
\t.section\t.text.k,"ax",@progbits
        .global         k
k:
.text.k:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   ULDC.64 UR4, c[0x0][0x208] ;
.L_x_0:
        /*0020*/                   IMAD.WIDE.U32 R2, R0, 0x4, R4 ;
.L_x_1:
        /*0030*/                   LDG.E R6, desc[UR4][R2.64] ;
        /*0040*/                   FMUL R7, R6, 1.4426950216293334961 ;
        /*0050*/                   MUFU.EX2 R7, R7 ;
        /*0060*/              @!P0 FADD R7, R7, 1 ;
        /*0070*/                   IADD3 R2, P1, R2, 0x80, RZ ;
        /*0080*/                   ISETP.GE.AND P2, PT, R2, R8, PT ;
        /*0090*/                   STG.E desc[UR4][R2.64], R7 ;
        /*00a0*/              @!P2 BRA `(.L_x_1) ;
        /*00b0*/                   I2FP.F32.S32 R9, R0 ;
        /*00c0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00d0*/               @P3 BRA `(.L_x_0) ;
        /*00e0*/               @P4 BRA `(.L_x_3) ;
.L_x_2:
        /*00f0*/         {         FFMA R10, R10, R11, R12 ;
        /*0100*/                   SHFL.BFLY PT, R13, R10, 0x1, 0x1f ;        }
        /*0110*/                   FOOBAR.X R14, R13 ;
        /*0120*/                   BRA.U !UP0, `(.L_x_2) ;
.L_x_3:
        /*0130*/                   EXIT ;
.L_x_4:
        /*0140*/                   BRA `(.L_x_4);
"""

ENC = "/* 0x000fe200078e00ff */"
CUOBJDUMP = "\n".join(
    [
        "\tcode for sm_90a",
        "\t\tFunction : k",
        '\t.headerflags\t@"EF_CUDA_SM90"',
    ]
    + [
        f"        /*{off}*/ {ins} ;   {ENC}\n                                   {ENC}"
        for off, ins in [
            ("0000", "S2R R0, SR_TID.X"),
            ("0010", "ULDC.64 UR4, c[0x0][0x208]"),
            ("0020", "IMAD.WIDE.U32 R2, R0, 0x4, R4"),
            ("0030", "LDG.E R6, desc[UR4][R2.64]"),
            ("0040", "FMUL R7, R6, 1.4426950216293334961"),
            ("0050", "MUFU.EX2 R7, R7"),
            ("0060", "@!P0 FADD R7, R7, 1"),
            ("0070", "IADD3 R2, P1, R2, 0x80, RZ"),
            ("0080", "ISETP.GE.AND P2, PT, R2, R8, PT"),
            ("0090", "STG.E desc[UR4][R2.64], R7"),
            ("00a0", "@!P2 BRA 0x30"),
            ("00b0", "I2FP.F32.S32 R9, R0"),
            ("00c0", "BAR.SYNC.DEFER_BLOCKING 0x0"),
            ("00d0", "@P3 BRA 0x20"),
            ("00e0", "@P4 BRA 0x130"),
            ("00f0", "{ FFMA R10, R10, R11, R12"),
            ("0100", "SHFL.BFLY PT, R13, R10, 0x1, 0x1f }"),
            ("0110", "FOOBAR.X R14, R13"),
            ("0120", "BRA.U !UP0, 0xf0"),
            ("0130", "EXIT"),
            ("0140", "BRA 0x140"),
        ]
    ]
)


def _key(instrs):
    return [(i.offset, i.opcode, i.base, i.guard, i.target, i.branch_kind) for i in instrs]


def test_parse_both_syntaxes_agree():
    a = sm.parse(NVDISASM)
    b = sm.parse(CUOBJDUMP)
    assert len(a) == 21
    assert _key(a) == _key(b)
    assert {i.function for i in a} == {"k"} == {i.function for i in b}
    by_off = {i.offset: i for i in a}
    assert by_off[0x20].opcode == "IMAD.WIDE.U32" and by_off[0x20].base == "IMAD"
    assert by_off[0x50].opcode == "MUFU.EX2" and by_off[0x50].base == "MUFU"
    assert by_off[0x60].guard == "!P0" and by_off[0x60].base == "FADD"
    assert (by_off[0xA0].target, by_off[0xA0].branch_kind) == (0x30, "conditional")
    assert (by_off[0xE0].target, by_off[0xE0].backward) == (0x130, False)
    # a uniform-predicate operand makes BRA.U conditional
    assert (by_off[0x120].target, by_off[0x120].branch_kind) == (0xF0, "conditional")
    assert (by_off[0x140].target, by_off[0x140].branch_kind) == (0x140, "unconditional")
    assert by_off[0xF0].opcode == "FFMA" and by_off[0x100].opcode == "SHFL.BFLY"


def test_pipe_counts_exact():
    counts = sm.pipe_counts(sm.parse(NVDISASM))
    expected = dict.fromkeys(sm.CLASSES, 0)
    expected.update(
        fp32=3, int=2, imad=1, mufu=1, conv=1, ldst=2, shfl=1, uniform=1, mov=1, other=1
    )
    expected["control"] = 7  # 5 BRA, BAR, EXIT
    assert counts == expected
    assert sm.unknown_opcodes(sm.parse(CUOBJDUMP)) == {"FOOBAR.X": 1}
    assert sm.classify("IMAD.MOV.U32") == "imad"
    assert sm.classify("UIADD3") == "uniform" and sm.classify("HFMA2.MMA") == "fp32"
    assert sm.classify("F2FP.BF16.F32.PACK_AB") == "conv" and sm.classify("DFMA") == "fp64"
    assert sm.classify("HGMMA.64x128x16.F32.BF16") == "tensor"


@pytest.mark.parametrize("text", [NVDISASM, CUOBJDUMP], ids=["nvdisasm", "cuobjdump"])
def test_loops_nested(text):
    instrs = sm.parse(text)
    found = sm.loops(instrs)
    assert [(lp.start, lp.end, lp.depth, lp.innermost) for lp in found] == [
        (0x20, 0xD0, 1, False),
        (0x30, 0xA0, 2, True),
        (0xF0, 0x120, 1, True),
    ]
    inner = found[1]
    assert [i.offset for i in inner.instrs] == list(range(0x30, 0xB0, 0x10))
    assert inner.back_edges == (0xA0,)
    c = inner.counts()
    assert (c["fp32"], c["mufu"], c["ldst"], c["int"], c["control"]) == (2, 1, 2, 2, 1)
    assert sum(c.values()) == 8
    assert sum(found[0].counts().values()) == 12

    prof = sm.loop_profile(instrs, inner, elements_per_iteration=256, num_warps=4)
    assert prof["fp32"] == 2 * 4 / 256 and prof["mufu"] == 4 / 256 and prof["fp64"] == 0.0
    with pytest.warns(UserWarning, match="FOOBAR"):
        prof2 = sm.loop_profile(instrs, found[2], elements_per_iteration=32, num_warps=1)
    assert prof2["other"] == 1 / 32


def test_ceiling_arithmetic_by_hand():
    prof = {"fp32": 4.0, "int": 2.0, "imad": 1.0, "mufu": 0.5, "conv": 0.25, "ldst": 0.5}
    prof["mov"] = 0.75
    r = sm.ceiling(prof, 2.0, "sm_90")
    c = r["clocks_per_element"]
    assert c["fp32"] == 4 * 32 / 128 == 1.0
    assert c["int"] == 2 * 32 / 64 == 1.0
    assert c["imad"] == 0.5 and c["mufu"] == 1.0 and c["conv"] == 0.5 and c["ldst"] == 0.5
    assert c["fma"] == (4 + 1) * 32 / 128
    assert c["xu"] == (0.5 + 0.25) * 32 / 16
    assert c["issue"] == 9.0 / 4
    assert r["compute_clocks"] == 2.25 and r["limiter"] == "issue"
    mem = 2.0 / 3.0e12 * 132 * 1.98e9
    assert r["memory_clocks"] == pytest.approx(mem, rel=1e-12)
    assert r["ceiling_fraction"] == pytest.approx(mem / 2.25, rel=1e-12)
    assert r["elements_per_second_model"] == pytest.approx(132 * 1.98e9 / 2.25, rel=1e-12)

    r80 = sm.ceiling(prof, 2.0, "sm_80")
    assert r80["clocks_per_element"]["fp32"] == 2.0
    assert r80["clocks_per_element"]["fma"] == 2.5 and r80["limiter"] == "fma"

    light = sm.ceiling({"fp32": 0.1}, 8.0, "sm_90")
    assert light["limiter"] == "memory" and light["ceiling_fraction"] == 1.0
    assert light["elements_per_second_model"] == pytest.approx(3.0e12 / 8.0, rel=1e-12)
    with pytest.raises(ValueError):
        sm.ceiling(prof, 2.0, "sm_75")


_COMPILE = textwrap.dedent(
    """
    import sys
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def exp_stream(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64) * n
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            x = tl.load(x_ptr + row + offs, mask=mask, other=0.0)
            tl.store(y_ptr + row + offs, tl.exp(x), mask=mask)

    sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
    src = ASTSource(fn=exp_stream, signature=sig, constexprs={"BLOCK": 1024})
    opts = {"num_warps": 4, "num_stages": 1}
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    with open(sys.argv[1], "wb") as f:
        f.write(k.asm["cubin"])
    """
)


def test_real_compile_sm90(tmp_path):
    script = tmp_path / "compile_exp_stream.py"
    script.write_text(_COMPILE)
    cubin_path = tmp_path / "exp_stream.cubin"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    res = subprocess.run(
        [sys.executable, str(script), str(cubin_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    text = sm.sass_text(cubin_path.read_bytes())
    instrs = sm.parse(text)
    assert instrs and not sm.unknown_opcodes(instrs)
    inner = [lp for lp in sm.loops(instrs) if lp.innermost]
    assert len(inner) == 1
    ops = {i.opcode for i in inner[0].instrs}
    bases = {i.base for i in inner[0].instrs}
    assert "MUFU.EX2" in ops and {"LDG", "STG"} <= bases
    counts = inner[0].counts()
    assert counts["fp32"] >= 1 and counts["mufu"] >= 1
    assert _key(sm.parse(sm.sass_text(cubin_path.read_bytes(), tool="cuobjdump"))) == _key(instrs)
    prof = sm.loop_profile(instrs, inner[0], elements_per_iteration=1024, num_warps=4)
    r = sm.ceiling(prof, 8.0, "sm_90")
    assert r["compute_clocks"] > 0 and 0 < r["ceiling_fraction"] <= 1
