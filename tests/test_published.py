"""The shipped copy of the paper's numbers."""

from study.analysis import published

F0_F6 = [f"nfnet-f{i}" for i in range(7)]


def test_published_loader_keeps_source_and_maps_variants():
    df = published.load()
    assert {"source", "model", "metric", "value"} <= set(df.columns)
    nf = published.nfnets()
    assert list(nf["model"]) == F0_F6 and (nf["source"] == "Table 3").all()
    assert nf.set_index("model").loc["nfnet-f6", "paper_model"] == "NFNet-F6+SAM"
    assert list(published.efficientnets()["paper_model"]) == ["EffNet-B0"] + [f"EffNet-B{i}" for i in range(3, 8)]

