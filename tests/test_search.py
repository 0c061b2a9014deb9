"""byol search and byol duplicates: planted neighbours come back in order (row and image queries),
a query embedded twice finds the same rows, planted near-copies (resized, re-encoded JPEG) are
grouped and distinct images are not, and bad input is one line naming it (CPU, seconds)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byol.base.errors import ConfigError, StoreError
from byol.encoders.build import build_encoder
from byol.extract.latent_command import generate
from byol.search.duplicates_command import DEFAULT_THRESHOLD, find_duplicates, main as duplicates_main
from byol.search.nearest import duplicate_pairs, group_pairs, nearest
from byol.search.search_command import main as search_main, search
from byol.store import FeatureStore
from byol.subcommands import main as byol_main

import warm_process
from testkit import REPO, TINY, run_main, write_encoder, write_store


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def planted(tmp_path):
    """A 16-d store of 60 random rows in 4 shards; rows 10..14 are ever closer copies of a hidden
    direction q (row 14 the closest), row 40 an exact copy of row 3. (store dir, q, the rows)."""
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((60, 16))).astype(np.float32)
    q = unit(rng.standard_normal(16)).astype(np.float32)
    for j, row in enumerate(range(10, 15)):            # similarity to q: 0.80, 0.85, 0.90, 0.95, 0.99
        noise = unit(rng.standard_normal(16) - (rng.standard_normal(16) @ q) * q)
        s = [0.80, 0.85, 0.90, 0.95, 0.99][j]
        x[row] = unit(s * q + np.sqrt(1 - s * s) * (noise - (noise @ q) * q) / np.linalg.norm(noise - (noise @ q) * q))
    x[40] = x[3]
    paths = [f"/nowhere/img{i:02d}.png" for i in range(60)]
    store = write_store(tmp_path / "store", x * 3.0, np.full(60, -1), shard_rows=17, paths=paths)
    return store, q, x


def test_nearest_returns_planted_rows_in_order_across_blocks(planted):
    store, q, x = planted
    sims, rows = nearest(FeatureStore.open(store), q[None] * 7.0, k=5, block_rows=6)   # scale is irrelevant
    assert rows[0].tolist() == [14, 13, 12, 11, 10]
    np.testing.assert_allclose(sims[0], [0.99, 0.95, 0.90, 0.85, 0.80], atol=1e-5)


def test_row_queries_never_return_their_own_row(planted, tmp_path):
    store, _, x = planted
    summary = search(["row:3", "row:14"], store, tmp_path / "out", k=3, block_rows=7)
    lines = [json.loads(line) for line in (tmp_path / "out" / "neighbors.jsonl").read_text().splitlines()]
    assert [line["query"] for line in lines] == ["row:3", "row:14"]
    first = lines[0]["neighbors"][0]
    assert first == {"path": "/nowhere/img40.png", "similarity": pytest.approx(1.0, abs=1e-6)}   # its copy
    assert "/nowhere/img03.png" not in [n["path"] for n in lines[0]["neighbors"]]
    assert [n["path"] for n in lines[1]["neighbors"]][:1] == ["/nowhere/img13.png"]
    sims = [n["similarity"] for n in lines[1]["neighbors"]]
    assert sims == sorted(sims, reverse=True) and len(sims) == 3
    assert summary["n_queries"] == 2 and summary["n_skipped"] == 0
    assert (tmp_path / "out" / "neighbors.png").stat().st_size > 1000


def test_store_without_paths_names_neighbours_by_item(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    store = write_store(tmp_path / "s", x, np.zeros(20), indices=np.arange(100, 120))
    search(["row:0"], store, tmp_path / "out", k=2)
    line = json.loads((tmp_path / "out" / "neighbors.jsonl").read_text())
    assert [set(n) for n in line["neighbors"]] == [{"item", "similarity"}] * 2
    assert all(101 <= n["item"] < 120 for n in line["neighbors"])


# ------------------------------------------------------------------------ images, through an encoder

def pattern(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random colour image (uint8 [size, size, 3]): distinct seeds look distinct."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    """A folder of 12 distinct images, 3 of them also as near-copies (saved at twice the size as JPEG
    quality 75, as benchmarks/duplicate_threshold.py makes them), embedded by `byol latent` with a tiny
    random encoder: (store, folder, encoder)."""
    root = tmp_path_factory.mktemp("search")
    folder = root / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(pattern(i)).save(folder / f"img{i:02d}.png")
    for i in (2, 5, 9):
        im = Image.fromarray(pattern(i))
        im.resize((96, 96), Image.Resampling.BICUBIC).save(folder / f"img{i:02d}_copy.jpg", quality=75)
    torch.manual_seed(0)
    encoder = write_encoder(root / "run" / "encoder.pt", build_encoder("mobilenet_v3_small", kwargs={"width_mult": 0.25}),
                            TINY, step=1)
    generate(encoder, [str(folder)], root / "store", progress=False, device="cpu")
    return root / "store", folder, encoder


def test_image_queries_find_themselves_first_and_twice_the_same(image_store, tmp_path):
    store, folder, _ = image_store
    query = folder / "img05.png"
    summary = search([str(query), str(query)], store, tmp_path / "out", k=3)
    lines = [json.loads(line) for line in (tmp_path / "out" / "neighbors.jsonl").read_text().splitlines()]
    assert [line["query"] for line in lines] == [str(query)] * 2
    assert lines[0]["neighbors"] == lines[1]["neighbors"]
    assert lines[0]["neighbors"][0]["path"] == str(query)
    assert lines[0]["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert summary["n_queries"] == 2


def test_a_query_that_is_not_an_image_is_skipped_with_its_reason(image_store, tmp_path):
    store, folder, _ = image_store
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    summary = search([str(fake), str(folder / "img01.png")], store, tmp_path / "out", k=2)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert summary["n_queries"] == 1 and summary["n_skipped"] == 1
    assert skipped["skipped"][0]["path"] == str(fake) and "Error" in skipped["skipped"][0]["reason"]
    assert len((tmp_path / "out" / "neighbors.jsonl").read_text().splitlines()) == 1


def test_a_checkpoint_that_embeds_otherwise_is_one_line_naming_what_differs(image_store, tmp_path, capsys):
    store, folder, _ = image_store
    other = write_encoder(tmp_path / "other" / "encoder.pt",
                          build_encoder("mobilenet_v3_small", kwargs={"width_mult": 0.25}), TINY, step=2)
    code, out, err = run_main(search_main, [folder / "img01.png", "--store", store, "--out", tmp_path / "o",
                                            "--checkpoint", other], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: checkpoint") and "checkpoint_sha256" in err and str(store) in err


def test_a_store_whose_checkpoint_is_gone_asks_for_one(image_store, tmp_path):
    store, folder, encoder = image_store
    run, moved = Path(encoder).parent, tmp_path / "moved-run"
    run.rename(moved)                                  # encoder.pt with its encoder.json
    try:
        with pytest.raises(ConfigError, match="pass --checkpoint"):
            search([str(folder / "img01.png")], store, tmp_path / "out")
        search([str(folder / "img01.png")], store, tmp_path / "out", checkpoint=str(moved / "encoder.pt"))
    finally:
        moved.rename(run)
    assert len((tmp_path / "out" / "neighbors.jsonl").read_text().splitlines()) == 1


def test_duplicates_groups_the_planted_near_copies_and_nothing_else(image_store, tmp_path):
    store, folder, _ = image_store
    summary = find_duplicates(store, tmp_path / "dups")
    result = json.loads((tmp_path / "dups" / "duplicates.json").read_text())
    groups = sorted(sorted(Path(p).name for p in group) for group in result["groups"])
    assert groups == [["img02.png", "img02_copy.jpg"], ["img05.png", "img05_copy.jpg"],
                      ["img09.png", "img09_copy.jpg"]]
    assert result["threshold"] == DEFAULT_THRESHOLD and summary["n_groups"] == 3 and summary["n_pairs"] == 3
    assert all(s >= DEFAULT_THRESHOLD for sims in result["group_similarity"] for s in sims)
    quantiles = result["nearest_similarity_quantiles"]
    assert list(quantiles.values()) == sorted(quantiles.values()) and quantiles["0.5"] < DEFAULT_THRESHOLD
    assert (tmp_path / "dups" / "duplicates.png").stat().st_size > 1000


def test_duplicate_groups_are_stars_around_a_leader_never_chains_nor_self_pairs(tmp_path):
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((30, 8))).astype(np.float32)
    x[7] = x[21] = x[4]                                    # three identical rows
    chain = [11, 12, 13, 14, 15]                           # on a circle, 0.3 rad apart: neighbours at
    for i, row in enumerate(chain):                        # cos 0.3 = 0.955, two apart at cos 0.6 = 0.825
        x[row] = 0
        x[row, :2] = np.cos(0.3 * i), np.sin(0.3 * i)
    store = FeatureStore.open(write_store(tmp_path / "s", x, np.zeros(30), shard_rows=8))
    found = duplicate_pairs(store, 0.95, max_per_item=3, center=False, block_rows=5, query_rows=4)
    assert (found.pairs[:, 0] < found.pairs[:, 1]).all() and len(np.unique(found.pairs, axis=0)) == len(found.pairs)
    assert np.all(found.similarity[:-1] >= found.similarity[1:])
    assert {tuple(p) for p in found.pairs.tolist()} == {(4, 7), (4, 21), (7, 21), (11, 12), (12, 13), (13, 14),
                                                          (14, 15)}
    groups = group_pairs(found.pairs, found.similarity)
    assert [g["rows"] for g in groups] == [[4, 7, 21], [12, 11, 13], [14, 15]]   # leaders: most pairs, lower row
    for g in groups:                                       # every member is near the leader itself
        np.testing.assert_allclose(g["similarity"], x[g["rows"][1:]] @ x[g["rows"][0]], atol=1e-5)
        assert min(g["similarity"]) >= 0.95
    assert found.nearest_quantiles()["0.5"] < 0.95 < found.nearest_quantiles()["0.999"]


def test_empty_or_unreadable_stores_are_one_line_naming_them(tmp_path, capsys):
    empty = write_store(tmp_path / "empty", np.zeros((0, 8), np.float32), np.zeros(0))
    code, _, err = run_main(duplicates_main, [empty, "--out", tmp_path / "o"], capsys)
    assert code == 2 and err == f"error: {empty}: the store holds no rows: extract some images into it first\n"
    code, _, err = run_main(search_main, ["row:0", "--store", tmp_path / "nothing", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / "nothing") in err and "no manifest.json" in err
    with pytest.raises(ConfigError, match="rows 0..19"):
        search(["row:20"], write_store(tmp_path / "s", np.ones((20, 4), np.float32), np.zeros(20)), tmp_path / "o")
    with pytest.raises(StoreError, match="4-d"):
        nearest(FeatureStore.open(tmp_path / "s"), np.ones((1, 5), np.float32), k=1)


def test_the_commands_run_as_users_run_them(planted, tmp_path, capsys):
    """`python -m byol.search` as a process (the entry point itself), `byol duplicates` through the
    `byol` dispatcher in-process: each ends with its JSON summary line."""
    store, _, _ = planted
    ran = warm_process.run(["-m", "byol.search", "row:14", "--store", store, "--out", tmp_path / "s", "--k", "2"],
                           cwd=REPO)
    assert ran.returncode == 0, ran.stderr
    assert ran.last_json["n_queries"] == 1 and ran.last_json["store_rows"] == 60
    code, out, err = run_main(byol_main, ["duplicates", store, "--out", tmp_path / "d", "--threshold", "0.999",
                                          "--no-center"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["n_pairs"], summary["n_groups"], summary["n_rows_in_groups"]) == (1, 1, 2)   # rows 3 and 40
    code, _, err = run_main(byol_main, ["duplicates", store, "--out", tmp_path / "d"], capsys)
    assert code == 2 and "already holds duplicates.json" in err and "--overwrite" in err
