"""Data layer: names, Minari and D4RL sources, embedded generation, windows, normalizers, scores."""

import h5py
import numpy as np
import pytest
import torch

from dawm_fast.data import (CDFNormalizer, DatasetError, GaussianNormalizer, MinMaxNormalizer,
                            Normalizer, UnknownTaskError, discounted_returns_to_go, load_dataset,
                            make_windows, normalized_score, parse_task)
from dawm_fast.data import embedded
from dawm_fast.data.dataset import OfflineDataset
from dawm_fast.data.tasks import env_family


def random_episodes(rng, n_eps, obs_dim, act_dim, min_len=3, max_len=40, terminate_p=0.5):
    eps = []
    for _ in range(n_eps):
        n = int(rng.integers(min_len, max_len))
        term = bool(rng.random() < terminate_p)
        eps.append({
            "observations": rng.normal(size=(n + 1, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n),
            "terminations": np.array([False] * (n - 1) + [term]),
            "truncations": np.array([False] * (n - 1) + [not term]),
        })
    return eps


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownTaskError, match="walker2d-medium-expert"):
        parse_task("walker3d-medium")
    with pytest.raises(UnknownTaskError, match="valid names"):
        load_dataset("hopper-random")


def test_minari_dataset_written_with_minaris_api_loads(minari_store, rng):
    import minari
    from minari.data_collector import EpisodeBuffer

    eps = random_episodes(rng, 6, 17, 6)
    for kind in ("medium", "expert"):
        bufs = [EpisodeBuffer(id=i, **{k: v for k, v in e.items()}) for i, e in enumerate(eps)]
        minari.create_dataset_from_buffers(f"mujoco/walker2d/{kind}-v0", bufs, env="Walker2d-v5",
                                           algorithm_name="test", ref_min_score=0.0,
                                           ref_max_score=100.0, data_format="hdf5")
    ds = load_dataset("walker2d-medium", source="minari")
    n = sum(len(e["actions"]) for e in eps)
    assert len(ds) == n and ds.source.startswith("minari")
    np.testing.assert_array_equal(ds.observations[:len(eps[0]["actions"])],
                                  eps[0]["observations"][:-1])
    np.testing.assert_array_equal(ds.next_observations[:len(eps[0]["actions"])],
                                  eps[0]["observations"][1:])
    assert ds.terminals.sum() == sum(e["terminations"][-1] for e in eps)
    assert ds.timeouts.sum() == sum(e["truncations"][-1] for e in eps)
    assert ds.ref_min_score == 0.0 and ds.ref_max_score == 100.0
    # auto prefers real Minari data when it is in the local store, and medium-expert combines
    logs = []
    me = load_dataset("walker2d-medium-expert", source="auto", log=logs.append)
    assert len(me) == 2 * n and "minari" in me.source and "real Minari" in logs[0]
    assert me.episode_ends.sum() == 2 * len(eps)
    with pytest.raises(DatasetError, match="no medium-replay"):
        load_dataset("walker2d-medium-replay", source="minari")


def test_a_dataset_written_meanwhile_by_another_process_is_kept(minari_store, rng, monkeypatch):
    """Two runs generating the same embedded dataset at once: the one that finishes second keeps
    the first one's dataset instead of failing on the move into place. The rival's dataset is
    written by Minari's own writer, so the check sees Minari's real layout."""
    import contextlib

    import minari
    from minari.data_collector import EpisodeBuffer

    from dawm_fast.data import minari_store as ms
    dataset_id = "dawm_fast/walker2d/medium-v0"
    real_store_at = ms._minari_store_at
    theirs = random_episodes(rng, 2, 17, 6)

    @contextlib.contextmanager
    def store_then_rival_finishes(path):
        with real_store_at(path):
            yield
        # the other process finishes first, into the real store
        minari.create_dataset_from_buffers(
            dataset_id, [EpisodeBuffer(id=i, **e) for i, e in enumerate(theirs)],
            env="Walker2d-v5", algorithm_name="rival", data_format="hdf5")

    monkeypatch.setattr(ms, "_minari_store_at", store_then_rival_finishes)
    ms.write_minari(dataset_id, random_episodes(rng, 3, 17, 6), "Walker2d-v5", ref_min_score=0.0,
                    ref_max_score=1.0, description="test", algorithm_name="test")
    assert ms.is_local(dataset_id)
    kept = minari.load_dataset(dataset_id)
    assert kept.total_episodes == len(theirs)                  # theirs, whole
    assert not list(ms.store_root().glob(".dawm_tmp_*"))      # our copy is cleaned up


def test_minari_missing_dataset_says_what_to_do(minari_store):
    with pytest.raises(DatasetError, match="minari download mujoco/hopper/medium-v0"):
        load_dataset("hopper-medium", source="minari")


def write_d4rl(path, rng, n=300, obs_dim=11, act_dim=3, next_obs=True):
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[[50, 170]] = True
    tout[[120, 260]] = True
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = term
        f["timeouts"] = tout
        if next_obs:
            f["next_observations"] = np.roll(obs, -1, 0)
    return obs, term, tout


def test_d4rl_file_loads(tmp_path, rng):
    path = tmp_path / "hopper_medium-v2.hdf5"
    obs, term, tout = write_d4rl(path, rng)
    ds = load_dataset("hopper-medium", source="d4rl", path=str(path))
    assert len(ds) == 300 and ds.eval_env_id == "Hopper-v4"
    np.testing.assert_array_equal(ds.observations, obs)
    np.testing.assert_array_equal(ds.terminals, term)
    # without next_observations: like d4rl.qlearning_dataset, timeout steps are dropped
    path2 = tmp_path / "no_next.hdf5"
    obs, term, tout = write_d4rl(path2, rng, next_obs=False)
    ds = load_dataset("hopper-medium", source="d4rl", path=str(path2))
    keep = ~tout
    keep[-1] = False
    assert len(ds) == keep.sum()
    np.testing.assert_array_equal(ds.observations, obs[keep])
    # every next observation is the following row of the same episode
    rows = np.flatnonzero(keep)
    np.testing.assert_array_equal(ds.next_observations, obs[rows + 1])
    assert ds.timeouts[np.searchsorted(rows, 119)] and ds.timeouts[-1]


def test_d4rl_bad_files(tmp_path, rng):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("hopper-medium", source="d4rl", path=str(tmp_path / "nope.hdf5"))
    good = tmp_path / "good.hdf5"
    write_d4rl(good, rng)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="truncated.hdf5"):
        load_dataset("hopper-medium", source="d4rl", path=str(truncated))
    missing = tmp_path / "missing.hdf5"
    with h5py.File(missing, "w") as f:
        f["observations"] = np.zeros((5, 11), np.float32)
    with pytest.raises(DatasetError, match="lacks actions, rewards, terminals"):
        load_dataset("hopper-medium", source="d4rl", path=str(missing))
    with pytest.raises(DatasetError, match=r"expected \[N, 17\]"):
        load_dataset("walker2d-medium", source="d4rl", path=str(good))
    nan = tmp_path / "nan.hdf5"
    write_d4rl(nan, rng)
    with h5py.File(nan, "a") as f:
        f["rewards"][3] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        load_dataset("hopper-medium", source="d4rl", path=str(nan))


def brute_force_windows(ds, T, gamma, scale):
    ends = ds.episode_ends
    ep_id = np.concatenate([[0], np.cumsum(ends)[:-1]])
    out = []
    for t in range(len(ds)):
        if t + T - 1 >= len(ds) or ep_id[t + T - 1] != ep_id[t]:
            continue
        g, k = 0.0, t
        while True:
            g += gamma ** (k - t) * ds.rewards[k]
            if ends[k]:
                break
            k += 1
        out.append((t, g / scale))
    return out


def window_test_data(rng):
    """Short random episodes, some ending in a terminal, some cut by time; window settings."""
    from dawm_fast.data.dataset import from_episodes
    eps = random_episodes(rng, 12, 5, 2, min_len=2, max_len=30)
    for ep, fell in zip(eps, (True, False)):          # at least one end of each kind
        ep["terminations"][-1], ep["truncations"][-1] = fell, not fell
    return from_episodes("hopper-medium", eps, "test", "Hopper-v5"), 8, 0.99, 400.0


def test_windows_and_return_to_go_match_brute_force(rng):
    ds, T, gamma, scale = window_test_data(rng)
    w = make_windows(ds, T, gamma, scale, past_falls=False)
    expected = brute_force_windows(ds, T, gamma, scale)
    assert [int(s) for s in w.start_index] == [t for t, _ in expected]
    np.testing.assert_allclose(w.returns_to_go, [g for _, g in expected], rtol=1e-5, atol=1e-7)
    for i, t in enumerate(w.start_index):
        np.testing.assert_array_equal(w.states[i], ds.observations[t:t + T])
        np.testing.assert_array_equal(w.rewards[i], ds.rewards[t:t + T])
        np.testing.assert_array_equal(w.first_actions[i], ds.actions[t])
        # a window never crosses an episode end (only its last step may be one)
        assert not ds.episode_ends[t:t + T - 1].any()
    assert w.terminals.shape == (len(w), T) and w.timeouts.shape == (len(w), T)
    assert not (w.terminals & w.timeouts).any()


def test_windows_run_past_falls_with_the_fallen_state(rng):
    ds, T, gamma, scale = window_test_data(rng)
    inside = make_windows(ds, T, gamma, scale, past_falls=False)
    w = make_windows(ds, T, gamma, scale)
    ends = np.flatnonzero(ds.episode_ends)
    assert ds.terminals[ends].any() and not ds.terminals[ends].all()   # both kinds of end
    by_start = {int(t): i for i, t in enumerate(w.start_index)}
    # every window whole inside an episode is still there, unchanged
    for i, t in enumerate(inside.start_index):
        j = by_start.pop(int(t))
        np.testing.assert_array_equal(w.states[j], inside.states[i])
        np.testing.assert_array_equal(w.rewards[j], inside.rewards[i])
    # the others start in the last T-1 steps of an episode that ends in a terminal
    assert by_start
    for t, j in by_start.items():
        e = ends[np.searchsorted(ends, t)]
        assert ds.terminals[e] and e - t + 1 < T
        n = e - t + 1                                           # steps up to the fall
        np.testing.assert_array_equal(w.states[j, :n], ds.observations[t:e + 1])
        np.testing.assert_array_equal(w.states[j, n:], np.repeat(ds.next_observations[e][None],
                                                                 T - n, 0))
        np.testing.assert_array_equal(w.rewards[j, :n], ds.rewards[t:e + 1])
        assert (w.rewards[j, n:] == ds.rewards[e]).all()         # the falling step's, held
        assert w.terminals[j, n - 1] and not w.terminals[j, n:].any()
        np.testing.assert_array_equal(w.first_actions[j], ds.actions[t])
    # no window runs past a timeout: every start of an episode cut by time is a whole window
    for t in w.start_index:
        e = ends[np.searchsorted(ends, t)]
        assert ds.terminals[e] or e - t + 1 >= T


def test_windows_past_falls_can_give_the_steps_after_a_fall_reward_zero(rng):
    ds, T, gamma, scale = window_test_data(rng)
    zero = make_windows(ds, T, gamma, scale, past_reward="zero")
    hold = make_windows(ds, T, gamma, scale)
    np.testing.assert_array_equal(hold.states, zero.states)
    ends = np.flatnonzero(ds.episode_ends)
    changed = 0
    for j, t in enumerate(hold.start_index):
        e = ends[np.searchsorted(ends, t)]
        n = min(e - t + 1, T)                                   # steps up to the episode's end
        np.testing.assert_array_equal(hold.rewards[j, :n], zero.rewards[j, :n])
        assert (zero.rewards[j, n:] == 0).all()
        changed += T - n
    assert changed > 0
    with pytest.raises(ValueError, match="past_reward must be one of"):
        make_windows(ds, T, gamma, scale, past_reward="last")


def test_discounted_rtg_single_episode():
    r = np.array([1.0, 2.0, 3.0])
    g = discounted_returns_to_go(r, np.array([False, False, True]), 0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


@pytest.mark.parametrize("cls", [CDFNormalizer, GaussianNormalizer, MinMaxNormalizer])
def test_normalizers_round_trip_save_load(cls, tmp_path, rng):
    x = np.concatenate([rng.normal(size=(2000, 3)) * [1, 10, 0.1],
                        rng.exponential(size=(2000, 1)), np.full((2000, 1), 2.5)], 1)
    x = x.astype(np.float32)
    norm = cls(x)
    y = norm.normalize(x)
    if cls is not GaussianNormalizer:
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
    np.testing.assert_allclose(norm.unnormalize(y)[:, :4], x[:, :4], atol=2e-3, rtol=1e-3)
    yt = norm.normalize(torch.from_numpy(x))
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-4)
    np.testing.assert_allclose(norm.unnormalize(yt).numpy()[:, :4], x[:, :4], atol=2e-3,
                               rtol=1e-3)
    norm.save(tmp_path / "n.npz")
    loaded = Normalizer.load(tmp_path / "n.npz")
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.normalize(x), y)


def test_cdf_normalizer_is_roughly_uniform(rng):
    x = rng.standard_cauchy(size=(20000, 2)).astype(np.float32)
    y = CDFNormalizer(x).normalize(x)
    hist, _ = np.histogram(y[:, 0], bins=10, range=(-1, 1))
    assert hist.min() > 0.8 * len(x) / 10


def test_normalized_score_names_its_reference():
    s, label = normalized_score("walker2d-medium", [4592.3, 1.629008])
    np.testing.assert_allclose(s, [100.0, 0.0])
    assert label.startswith("D4RL")
    s, label = normalized_score("hopper", [150.0], ref_min=100.0, ref_max=200.0)
    np.testing.assert_allclose(s, [50.0])
    assert label.startswith("dataset")


# -- embedded datasets -------------------------------------------------------------------------

def test_embedded_generation_on_first_use(minari_store, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "POLICY_DIR", tmp_path / "policies")
    monkeypatch.setattr(embedded, "RECIPE", embedded.EmbeddedRecipe(
        expert_steps=500, medium_steps=400, n_envs=3))
    embedded.write_random_policies(tmp_path / "policies", env_family("hopper"))
    logs = []
    ds = load_dataset("hopper-medium-expert", log=logs.append)
    assert "embedded" in ds.source and "dawm_fast/hopper/medium-v0" in ds.source
    assert any("using the embedded" in line for line in logs)
    assert 900 <= len(ds) and ds.eval_env_id == "Hopper-v5"
    assert ds.ref_min_score == -5.0 and ds.ref_max_score == 300.0
    # hopper terminates: health-based terminations are in the data
    assert ds.terminals.any()
    assert (minari_store / "dawm_fast/hopper/expert-v0/data/main_data.hdf5").exists()
    assert not list(minari_store.glob(".dawm_tmp_*"))
    # second load reads the store, regenerates nothing, and gives the same data
    logs.clear()
    again = load_dataset("hopper-medium-expert", source="embedded", log=logs.append)
    assert not any("generating" in line for line in logs)
    np.testing.assert_array_equal(again.observations, ds.observations)
    replay = load_dataset("hopper-medium-replay", source="embedded", log=logs.append)
    assert len(replay) == 600 and replay.timeouts[-1]


def test_runs_that_start_together_make_an_embedded_dataset_once(minari_store, tmp_path,
                                                                 monkeypatch):
    """A sweep's first jobs all want the same embedded dataset: one makes it, the others wait on
    the store's lock and read it (seen: a walker2d run failed with 'already exists' when its
    world model's job made the data first)."""
    import multiprocessing as mp

    from dawm_fast.data import minari_store as ms
    monkeypatch.setattr(embedded, "POLICY_DIR", tmp_path / "policies")
    monkeypatch.setattr(embedded, "RECIPE", embedded.EmbeddedRecipe(medium_steps=400, n_envs=2))
    embedded.write_random_policies(tmp_path / "policies", env_family("hopper"))
    dataset_id = embedded.minari_id("hopper", "medium")

    def other_run(out):
        logs = []
        try:
            ds = load_dataset("hopper-medium", source="embedded", log=logs.append)
            out.put((len(ds), logs))
        except Exception as e:                                  # reported, not hidden
            out.put((None, [repr(e)]))

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    with ms.writing_lock(dataset_id):       # this process is making it when the other starts
        child = ctx.Process(target=other_run, args=(out,))
        child.start()
        embedded._generate(env_family("hopper"), "medium", embedded.RECIPE, 0, print,
                           tmp_path / "policies")
    n, logs = out.get(timeout=120)
    child.join(timeout=60)
    assert n == len(load_dataset("hopper-medium", source="embedded")), logs
    assert any("made by another process meanwhile" in line for line in logs)


def test_embedded_without_policies_says_so(minari_store, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "POLICY_DIR", tmp_path / "none")
    with pytest.raises(DatasetError, match="source='minari'"):
        load_dataset("halfcheetah-medium", source="embedded")


def test_dataset_rejects_mismatched_lengths():
    with pytest.raises(DatasetError, match="'actions' has 2 rows"):
        OfflineDataset("x", np.zeros((3, 2)), np.zeros((2, 1)), np.zeros(3), np.zeros((3, 2)),
                       np.zeros(3, bool), np.zeros(3, bool), "test", "Hopper-v5")
