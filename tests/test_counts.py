"""models.structure (study/models/counts.py): parameters and MACs counted once, cached on disk by the models' source."""

import json

from study import models
from study.models import counts

# The models' exact counts at the test resolution (tests/test_models.py checks them against
# Table 3; building F0–F6 abstractly takes minutes on 2 cores, so the report tests reuse them).
COUNTS = {"nfnet-f0": (71489284, 12384198656, 256), "nfnet-f1": (132634256, 35538968576, 320),
          "nfnet-f2": (193779228, 62592978944, 352), "nfnet-f3": (254924200, 114763501568, 416),
          "nfnet-f4": (316069172, 215241187328, 512), "nfnet-f5": (377214144, 289757106176, 544),
          "nfnet-f6": (438359116, 377280307200, 576)}


def test_structure_counts_the_model_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(counts, "_memory", {})
    got = models.structure("nfnet-f0")
    assert (got.params, got.macs, got.resolution) == COUNTS["nfnet-f0"]
    path = next((tmp_path / "study").glob("structure-*.json"))
    cached = json.loads(path.read_text())
    assert [v["params"] for v in cached.values()] == [COUNTS["nfnet-f0"][0]]
    # A second process reads the file: poison the entry and see it come back from disk.
    key = next(iter(cached))
    cached[key]["params"] = 1
    path.write_text(json.dumps(cached))
    monkeypatch.setattr(counts, "_memory", {})
    assert models.structure("nfnet-f0").params == 1


def test_structure_of_overrides_and_resolution_are_their_own_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = models.structure("nf-resnet-nano", 28)
    b = models.structure("nf-resnet-nano", 28, num_classes=5)
    c = models.structure("nf-resnet-nano", 56)
    assert a.params > b.params and a.macs > b.macs  # 10 classes against 5: a larger classifier
    assert c.params == a.params and c.macs > 3.5 * a.macs  # 4× the pixels
