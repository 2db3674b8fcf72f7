"""environment.json's CPU line: the model and the widest vector ISA XLA compiles for, since two
CPUs that differ there may round differently (a rerun's provenance must tell them apart)."""

from study import environment

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512dq avx512bw

processor\t: 1
model name\t: something else
"""
ROME = ZEN4.replace("family\t: 25", "family\t: 23").replace("model\t\t: 17", "model\t\t: 49").replace(" avx512f avx512dq avx512bw", "")
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes crc32\nCPU implementer\t: 0x41\n"


def test_cpu_names_model_family_and_widest_isa():
    assert environment.cpu(ZEN4) == "AMD EPYC (family 25 model 17, avx512f)"
    assert environment.cpu(ROME) == "AMD EPYC (family 23 model 49, avx2)"
    assert environment.cpu(GRAVITON) == "0x41 (asimd)"


def test_this_machine_records_its_cpu():
    assert environment.cpu()  # whatever it is, never empty
