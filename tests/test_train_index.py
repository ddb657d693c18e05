"""Training step 3 (rvc_mlx.train.index) against RVC WebUI's ``train_index`` recipe written out here with faiss
(and sklearn's MiniBatchKMeans for the k-means branch), on random feature files."""

from __future__ import annotations

import numpy as np
import pytest

import faiss

from rvc_mlx.errors import RvcMlxError
from rvc_mlx.retrieval import FeatureIndex
from rvc_mlx.train import index as I

DIMS = {"v1": 256, "v2": 768}
FOLDERS = {"v1": "3_feature256", "v2": "3_feature768"}
KMEANS_INERTIA_RATIO = 1.03  # ours / sklearn's on the same data, both at batch 512 (measured 0.985..1.009)


def write_features(exp, version, rows=(310, 1200, 45, 980, 700), seed=0):
    """Random float32 feature files ``{i}_{j}.npy`` (names whose string order is not their creation order)."""
    rng = np.random.default_rng(seed)
    folder = exp / FOLDERS[version]
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i % 3}_{i}.npy" for i in range(len(rows))][::-1]
    for name, n in zip(names, rows):
        np.save(folder / name, rng.standard_normal((n, DIMS[version])).astype(np.float32))
    return folder


def rvc_train_index(exp, version, seed):
    """RVC WebUI ``train_index`` (no k-means branch): returns (index, n_ivf, big_npy)."""
    import os

    feature_dir = str(exp / FOLDERS[version])
    npys = [np.load(f"{feature_dir}/{name}") for name in sorted(os.listdir(feature_dir))]
    big_npy = np.concatenate(npys, 0)
    big_npy_idx = np.arange(big_npy.shape[0])
    np.random.seed(seed)
    np.random.shuffle(big_npy_idx)
    big_npy = big_npy[big_npy_idx]
    n_ivf = min(int(16 * np.sqrt(big_npy.shape[0])), big_npy.shape[0] // 39)
    index = faiss.index_factory(DIMS[version], "IVF%s,Flat" % n_ivf)
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(big_npy)
    for i in range(0, big_npy.shape[0], 8192):
        index.add(big_npy[i : i + 8192])
    return index, n_ivf, big_npy


def inertia(x, centers):
    flat = faiss.IndexFlatL2(centers.shape[1])
    flat.add(np.ascontiguousarray(centers, dtype=np.float32))
    d, _ = flat.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return float(d.astype(np.float64).sum())


def mixture(n, d, clusters, seed):
    """Clustered data (clusters of different spreads): a k-means problem with structure to find."""
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.standard_normal((clusters, d))
    labels = rng.integers(0, clusters, n)
    spread = rng.uniform(0.3, 1.5, clusters)[labels, None]
    return (centers[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_index_equals_rvc_recipe(tmp_path, version):
    write_features(tmp_path, version)
    stages = []
    path = I.build_index(tmp_path, "voice", version, seed=0, progress=lambda done, total, s: stages.append((done, total, s)))
    want, n_ivf, big = rvc_train_index(tmp_path, version, seed=0)
    n = 310 + 1200 + 45 + 980 + 700
    assert n_ivf == min(int(16 * np.sqrt(n)), n // 39) == 82
    assert path.name == f"added_IVF{n_ivf}_Flat_nprobe_1_voice_{version}.index"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FOLDERS[version], path.name])
    got = faiss.read_index(str(path))
    assert (got.ntotal, got.d, faiss.extract_index_ivf(got).nlist) == (n, DIMS[version], n_ivf)
    assert faiss.extract_index_ivf(got).nprobe == 1
    # the same shuffle makes faiss's IVF training (seeded k-means) deterministic: the files are byte-identical
    assert path.read_bytes() == faiss.serialize_index(want).tobytes()
    queries = np.random.default_rng(5).standard_normal((200, DIMS[version])).astype(np.float32)
    d_got, i_got = got.search(queries, 8)
    d_want, i_want = want.search(queries, 8)
    np.testing.assert_array_equal(i_got, i_want)
    np.testing.assert_array_equal(d_got, d_want)
    # the stored vectors are the shuffled rows, in RVC's order
    np.testing.assert_array_equal(got.reconstruct_n(0, n), big)
    assert stages == [(i + 1, 5, "load") for i in range(5)] + [(0, 1, "train"), (1, 1, "train"),
                                                                (1, 1, "add"), (1, 1, "write")]


def test_index_loads_in_retrieval_and_blends(tmp_path):
    write_features(tmp_path, "v2")
    path = I.build_index(tmp_path, "voice", "v2")
    index = FeatureIndex.load(path)  # the strict checker accepts what we write
    assert index.dim == 768 and index.index.ntotal == 3235
    feats = np.random.default_rng(1).standard_normal((50, 768)).astype(np.float32)
    out = index.blend(feats, 0.75)
    assert out.shape == feats.shape and np.isfinite(out).all()
    assert np.abs(out - feats).mean() > 0.1  # retrieval moved the features
    with pytest.raises(RvcMlxError):
        index.check_dim(256)


def test_seed_makes_it_reproducible(tmp_path):
    write_features(tmp_path, "v1")
    first = I.build_index(tmp_path, "a", "v1", seed=3).read_bytes()
    again = I.build_index(tmp_path, "a", "v1", seed=3).read_bytes()
    other = I.build_index(tmp_path, "b", "v1", seed=4)
    assert first == again and other.read_bytes() != first


def test_stale_index_is_replaced_and_total_fea_is_optional(tmp_path):
    write_features(tmp_path, "v1", rows=(100, 100))
    small = I.build_index(tmp_path, "voice", "v1")
    other_voice = I.build_index(tmp_path, "other", "v1")
    write_features(tmp_path, "v1", rows=(100, 100, 2000), seed=1)  # more data: another n_ivf
    big = I.build_index(tmp_path, "voice", "v1", save_total=True)
    assert big.name != small.name and not small.exists() and other_voice.exists()
    total = np.load(tmp_path / "total_fea.npy")
    assert total.shape == (2200, 256) and total.dtype == np.float32
    np.testing.assert_array_equal(total, faiss.read_index(str(big)).reconstruct_n(0, 2200))


def test_kmeans_branch_matches_rvc_recipe(tmp_path):
    """With the threshold lowered (RVC: 200 000 rows, 10 000 centroids), the index holds the k-means centroids,
    of a quality like sklearn's MiniBatchKMeans in RVC's call, and the IVF part follows RVC's recipe."""
    from sklearn.cluster import MiniBatchKMeans

    folder = tmp_path / FOLDERS["v1"]
    folder.mkdir()
    data = mixture(4000, 256, 300, seed=2)
    for i in range(2):
        np.save(folder / f"0_{i}.npy", data[i * 2000 : (i + 1) * 2000])
    stages = []
    path = I.build_index(tmp_path, "voice", "v1", kmeans_threshold=3000, n_centroids=200,
                         progress=lambda done, total, s: stages.append((done, total, s)))
    assert (0, 1, "kmeans") in stages and (1, 1, "kmeans") in stages
    got = faiss.read_index(str(path))
    n_ivf = min(int(16 * np.sqrt(200)), 200 // 39)
    assert path.name == f"added_IVF{n_ivf}_Flat_nprobe_1_voice_v1.index" and got.ntotal == 200
    ours = got.reconstruct_n(0, 200)
    ref = MiniBatchKMeans(n_clusters=200, batch_size=I.KMEANS_BATCH, compute_labels=False, init="random",
                          random_state=0).fit(data).cluster_centers_
    ratio = inertia(data, ours) / inertia(data, ref)
    print(f"k-means inertia ours / sklearn: {ratio:.4f}")
    assert ratio <= KMEANS_INERTIA_RATIO
    # the IVF stage of the recipe over our centroids gives the same index
    want = faiss.index_factory(256, f"IVF{n_ivf},Flat")
    faiss.extract_index_ivf(want).nprobe = 1
    want.train(ours)
    want.add(ours)
    assert path.read_bytes() == faiss.serialize_index(want).tobytes()


@pytest.mark.parametrize("n,d,clusters,k", [
    (20000, 64, 300, 200),
    pytest.param(20000, 256, 3000, 1000, marks=pytest.mark.slow),  # 20 rows per centroid, as at RVC's scale
])
def test_kmeans_quality_against_sklearn(n, d, clusters, k):
    from sklearn.cluster import MiniBatchKMeans

    x = mixture(n, d, clusters, seed=0)
    ours = I.kmeans_centroids(x, k, seed=0)
    assert ours.shape == (k, d) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, I.kmeans_centroids(x, k, seed=0))  # reproducible
    ref = MiniBatchKMeans(n_clusters=k, batch_size=I.KMEANS_BATCH, compute_labels=False, init="random",
                          random_state=0).fit(x).cluster_centers_
    ratio = inertia(x, ours) / inertia(x, ref)
    print(f"k-means {n}x{d} k={k}: inertia ours / sklearn {ratio:.4f}")
    assert ratio <= KMEANS_INERTIA_RATIO
    assert inertia(x, x[:k]) > 1.1 * inertia(x, ours)  # far better than its random start


@pytest.mark.slow
def test_rvc_scale_kmeans_path(tmp_path):
    """RVC's real threshold: 200 001+ rows are reduced to 10 000 centroids, n_ivf = min(1600, 256)."""
    folder = tmp_path / FOLDERS["v1"]
    folder.mkdir()
    data = mixture(200_500, 256, 20000, seed=3)
    for i in range(0, 200_500, 50_000):
        np.save(folder / f"{i // 50_000}_0.npy", data[i : i + 50_000])
    path = I.build_index(tmp_path, "voice", "v1")
    assert path.name == "added_IVF256_Flat_nprobe_1_voice_v1.index"
    index = FeatureIndex.load(path)
    assert index.index.ntotal == 10_000


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "3_feature768" in one_line(e) and "not found" in one_line(e)
    folder = tmp_path / "3_feature768"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "no feature files" in one_line(e)
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v3")
    assert "v3" in one_line(e)
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "../x", "v2")
    assert "name" in one_line(e)
    np.save(folder / "0_0.npy", np.zeros((20, 768), np.float32))
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "20 feature frames" in one_line(e)
    np.save(folder / "0_1.npy", np.zeros((100, 256), np.float32))
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "0_1.npy" in one_line(e) and "256-d" in one_line(e)
    (folder / "0_1.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "0_1.npy" in one_line(e) and "not a readable" in one_line(e)
    good = np.ones((100, 768), np.float32)
    np.save(folder / "0_1.npy", good)
    (folder / "0_1.npy").write_bytes((folder / "0_1.npy").read_bytes()[:-100])  # truncated
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "0_1.npy" in one_line(e)
    np.save(folder / "0_1.npy", np.ones(768, np.float32))
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "0_1.npy" in one_line(e) and "shape (768,)" in one_line(e)
    np.save(folder / "0_1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "0_1.npy" in one_line(e)
    good[3, 3] = np.nan
    np.save(folder / "0_1.npy", good)
    with pytest.raises(RvcMlxError) as e:
        I.build_index(tmp_path, "voice", "v2")
    assert "0_1.npy" in one_line(e) and "NaN" in one_line(e)
    assert not list(tmp_path.glob("*.index"))


@pytest.mark.slow
def test_features_to_index_to_conversion(tmp_path, ref_cache, monkeypatch):
    """The whole chain on real (random-weight) HuBERT features: prepare -> features -> index -> a conversion
    that loads the index and is moved by it."""
    import soundfile as sf

    from rvc_mlx import store
    from rvc_mlx.convert import convert_file
    from rvc_mlx.pipeline import ConversionOptions, VoiceConverter
    from rvc_mlx.service.models import resolve_base_model
    from rvc_mlx.train.features import extract_features
    from rvc_mlx.train.prepare import prepare
    from tests.reference import hubert_models, rvc_models
    from tests.reference.rmvpe_models import speech_like

    monkeypatch.setenv("RVC_MLX_HOME", str(ref_cache / "train_features_home"))
    hubert = resolve_base_model(hubert_models.ensure_reference(ref_cache) / hubert_models.FAIRSEQ_FILE, "hubert")
    variant = next(v for v in rvc_models.VARIANTS if v.name == "v1-32k-nof0")
    voice = tmp_path / "voice.safetensors"
    store.save(voice, *convert_file(rvc_models.checkpoint_path(ref_cache, variant)))
    dataset, exp = tmp_path / "dataset", tmp_path / "exp"
    dataset.mkdir()
    sf.write(str(dataset / "take.wav"), speech_like(6.0, 10, sr=32000), 32000)
    prepare(dataset, exp, 32000)  # step 1 writes the segments steps 2 and 3 read
    report = extract_features(exp, hubert, "v1", f0_method=None)
    assert report.features_written == report.segments >= 2
    path = I.build_index(exp, "voice", "v1")
    n = sum(np.load(p).shape[0] for p in (exp / "3_feature256").glob("*.npy"))
    assert path.name == f"added_IVF{I.n_ivf_for(n)}_Flat_nprobe_1_voice_v1.index"
    audio = speech_like(1.2, 99)
    vc = VoiceConverter.load(voice, hubert=hubert, index=path)
    with_index, sr = vc.convert(audio, 16000, ConversionOptions(deterministic=True, index_rate=0.75))
    without, _ = vc.convert(audio, 16000, ConversionOptions(deterministic=True, index_rate=0.0))
    assert sr == 32000 and np.isfinite(with_index).all()
    assert np.abs(with_index - without).max() > 0.01


def test_full_disk_is_one_line_and_leaves_nothing(tmpfs):
    from rvc_mlx.errors import DiskFullError

    exp = tmpfs("64k")
    write_features(exp, "v1", rows=(45,))  # 46 KB of features; the index needs as much again
    with pytest.raises(DiskFullError) as e:
        I.build_index(exp, "voice", "v1")
    assert "added_IVF1_Flat_nprobe_1_voice_v1.index" in one_line(e)
    assert sorted(p.name for p in exp.iterdir()) == ["3_feature256"]
