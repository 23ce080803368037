"""Sweep configs: valid files parse into the grid they describe; malformed ones fail naming the key."""

from __future__ import annotations

import pytest

from rnd.errors import ConfigError
from rnd.evaluation.config import load_config, parse_config
from rnd.evaluation.spec import QuickRule, quick_config, thin
from rnd.models import build_model, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An (untrained) checkpoint: config validation only needs the files to exist."""
    path = tmp_path_factory.mktemp("cfg") / "tiny"
    model = build_model("small-cnn", (1, 28, 28), 10, dataset="fashion-mnist", width=4, hidden=8)
    save_checkpoint(model, path, dataset="fashion-mnist")
    return path


def make(
    ckpt, extra: str = "", attack: str = 'name = "nes"\nnorm = "linf"\neps = 0.1\n', top: str = ""
) -> str:
    return (
        f'{top}name = "t"\nbudget = 100\n[data]\nimages = 4\n[defense]\nnu = [0.0, 0.02]\n'
        f'[[models]]\nlabel = "m"\ncheckpoint = "{ckpt}"\n[[attacks]]\n{attack}{extra}'
    )


def test_valid_config_parses(ckpt):
    cfg = parse_config(make(ckpt, 'mu = [0.001, "default"]\neot = [1, 2]\n[attacks.params]\nq = 5\n'))
    assert cfg.defenses == ("none", "rnd:nu=0.02")  # the older [defense] nu form
    a = cfg.attacks[0]
    assert a.mu == (0.001, None) and a.eot == (1, 2) and a.params == {"q": 5} and a.eps == (0.1,)
    assert cfg.data.images == 4 and cfg.budget == 100 and cfg.models[0].label == "m"


@pytest.mark.parametrize(
    ("text_change", "key"),
    [
        (lambda t: t.replace('name = "t"', 'name = "t"\ncolour = 1'), "colour"),  # unknown key, top
        (lambda t: t.replace("images = 4", "images = 4\nimagez = 3"), "data.imagez"),  # unknown, nested
        (lambda t: t.replace("eps = 0.1", "eps = 0.1\nstep = 2"), "attacks[0].step"),
        (lambda t: t.replace("budget = 100", 'budget = "many"'), "budget"),  # wrong type
        (lambda t: t.replace("images = 4", "images = 4.5"), "data.images"),
        (lambda t: t.replace("images = 4", "images = true"), "data.images"),  # bool is not an int
        (lambda t: t.replace("nu = [0.0, 0.02]", "nu = []"), "defense.nu"),  # empty grid
        (lambda t: t.replace("nu = [0.0, 0.02]", "nu = [0.0, -0.1]"), "defense.nu[1]"),
        (lambda t: t.replace("eps = 0.1", "eps = []"), "attacks[0].eps"),
        (lambda t: t.replace('name = "nes"', 'name = "fgsm"'), "attacks[0].name"),  # unknown attack
        (lambda t: t.replace('norm = "linf"', 'norm = "l1"'), "attacks[0].norm"),  # unknown norm
        (lambda t: t.replace("eps = 0.1", "eps = 0.1\nmu = [0.01, 0.01]"), "attacks[0].mu"),  # duplicate
        (lambda t: t.replace("eps = 0.1", 'eps = 0.1\nmu = ["big"]'), "attacks[0].mu[0]"),
        (lambda t: t.replace("eps = 0.1", "eps = 0.1\n[attacks.params]\nqq = 3"), "attacks[0].params"),
        (lambda t: t.replace('checkpoint = "', 'checkpoint = "/nonexistent/'), "models[0].checkpoint"),
        (lambda t: t.replace('name = "t"', 'name = "t"\noutput = "text"'), "output"),
        (lambda t: t.replace('name = "t"', 'name = "t"\noutput = "labels"'), "output"),
        (lambda t: t.replace("[data]", '[data]\ndataset = "mnist"'), "data.dataset"),
        (lambda t: t.replace('name = "t"', 'name = "t"\nseeds = []'), "seeds"),
    ],
)
def test_malformed_config_names_the_key(ckpt, text_change, key):
    with pytest.raises(ConfigError) as info:
        parse_config(text_change(make(ckpt)))
    assert str(info.value).startswith(f"{key}:") or f"{key}." in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("text_change", "key"),
    [
        (lambda t: t.replace("eps = 0.1", "esp = 0.1"), "attacks[0].esp"),  # not "attacks[0].eps: missing"
        (lambda t: t.replace('checkpoint = "', 'chekpoint = "'), "models[0].chekpoint"),
        (lambda t: t.replace("images = 4", "images = -1\nimagez = 3"), "data.imagez"),
        (lambda t: t.replace('name = "t"', "name = 3\ncolour = 1"), "colour"),
    ],
)
def test_an_unknown_key_is_reported_before_the_errors_it_may_explain(ckpt, text_change, key):
    """A misspelt key also leaves its right spelling missing: the one line names the misspelling."""
    with pytest.raises(ConfigError) as info:
        parse_config(text_change(make(ckpt)))
    assert str(info.value).startswith(f"{key}: unknown key; allowed here: "), str(info.value)


def test_missing_sections_and_bad_toml(ckpt, tmp_path):
    with pytest.raises(ConfigError, match="models"):
        parse_config('[[attacks]]\nname = "nes"\neps = 0.1\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("name = ")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_relative_checkpoint_resolves_against_config_folder(ckpt, tmp_path):
    import shutil

    for suffix in (".safetensors", ".json"):
        shutil.copy(f"{ckpt}{suffix}", tmp_path / f"model{suffix}")
    (tmp_path / "sweep.toml").write_text(make("model"))
    cfg = load_config(tmp_path / "sweep.toml")
    assert cfg.models[0].checkpoint == str(tmp_path / "model")


def test_thin_keeps_ends_and_spacing():
    assert thin((1, 2, 3, 4, 5), 3) == (1, 3, 5)
    assert thin((1, 2, 3, 4, 5), 4) == (1, 2, 4, 5)
    assert thin((1, 2), 3) == (1, 2)


def test_quick_rule(ckpt):
    cfg = parse_config(
        make(ckpt, "mu = [0.001, 0.002, 0.005, 0.01, 0.05]\n", top="seeds = [0, 1]\n")
        .replace("budget = 100", "budget = 5000")
        .replace("images = 4", "images = 50")
        + "[quick]\nimages = 7\nbudget = 300\nmax_grid = 3\n"
    )
    assert cfg.quick == QuickRule(7, 300, 3)
    q = quick_config(cfg)
    assert q.data.images == 7 and q.budget == 300 and q.seeds == (0,)
    assert q.attacks[0].mu == (0.001, 0.005, 0.05) and q.defenses == ("none", "rnd:nu=0.02")


# -- bounds on integers, accepted attack parameters, data-set mismatch, config paths ----------------


@pytest.mark.parametrize(
    ("text_change", "key", "bound"),
    [
        (lambda t: t.replace("budget = 100", f"budget = {2**63}"), "budget", "10**9"),
        (lambda t: t.replace("budget = 100", "budget = 1000000001"), "budget", "10**9"),
        (lambda t: t.replace('name = "t"', f'name = "t"\nseeds = [0, {2**63}]'), "seeds[1]", "2**63 - 1"),
        (lambda t: t.replace("images = 4", f"images = {10**7 + 1}"), "data.images", "10**7"),
        (lambda t: t.replace("images = 4", f"images = 4\nstart = {2**70}"), "data.start", "10**7"),
        (
            lambda t: t.replace("images = 4", f"images = 4\naccuracy_images = {2**64}"),
            "data.accuracy_images",
            "",
        ),
        (lambda t: t.replace('name = "t"', f'name = "t"\nvotes = {2**63}'), "votes", "10**6"),
        (lambda t: t.replace("eps = 0.1", f"eps = 0.1\neot = [1, {2**63}]"), "attacks[0].eot[1]", "10**6"),
        (lambda t: t.replace("eps = 0.1", f"eps = 0.1\nbudget = {2**63}"), "attacks[0].budget", "10**9"),
        (lambda t: t + f"[quick]\nbudget = {2**63}\n", "quick.budget", "10**9"),
        (
            lambda t: t.replace("eps = 0.1", f"eps = 0.1\n[attacks.params]\nq = {2**63}"),
            "attacks[0].params.q",
            "64 bits",
        ),
    ],
)
def test_integers_beyond_the_bounds_name_key_and_bound(ckpt, text_change, key, bound):
    with pytest.raises(ConfigError) as info:
        parse_config(text_change(make(ckpt)))
    msg = str(info.value)
    assert msg.startswith(f"{key}:") and bound in msg and "lower it" in msg, msg


def test_bounds_themselves_are_accepted(ckpt):
    text = make(ckpt).replace("budget = 100", "budget = 1000000000")
    cfg = parse_config(text.replace('name = "t"', f'name = "t"\nseeds = [{2**63 - 1}]'))
    assert cfg.budget == 10**9 and cfg.seeds == (2**63 - 1,)


def test_unknown_attack_param_lists_the_accepted_keys(ckpt):
    with pytest.raises(ConfigError) as info:
        parse_config(make(ckpt, "[attacks.params]\nqq = 3\n"))
    msg = str(info.value)
    assert msg.startswith("attacks[0].params.qq: unknown parameter of nes; accepted keys: ")
    accepted = msg.split("accepted keys: ")[1].split(", ")
    assert {"q", "lr", "loss", "mu_nu_ratio"} <= set(accepted) and "eps" not in accepted
    assert "targeted" not in accepted  # an [[attacks]] table's own key: targeted = true


def test_base_class_params_are_accepted(ckpt):
    cfg = parse_config(make(ckpt, '[attacks.params]\nloss = "ce"\nq = 5\n'))
    assert cfg.attacks[0].params == {"loss": "ce", "q": 5}


def test_allow_dataset_mismatch_key(ckpt):
    assert parse_config(make(ckpt)).data.allow_dataset_mismatch is False
    text = make(ckpt).replace("images = 4", "images = 4\nallow_dataset_mismatch = true")
    assert parse_config(text).data.allow_dataset_mismatch is True
    with pytest.raises(ConfigError, match=r"^data.allow_dataset_mismatch: expected true or false"):
        parse_config(make(ckpt).replace("images = 4", 'images = 4\nallow_dataset_mismatch = "yes"'))


def test_a_directory_is_not_a_missing_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "is a directory" in str(info.value) and "not found" not in str(info.value)
    assert "give the path of a TOML file" in str(info.value)


def test_every_paper_config_is_valid(tiny_model, tmp_path):
    """configs/paper/*.toml parse and pass every check (their checkpoints pointed at a test one)."""
    import re
    from pathlib import Path

    from rnd.evaluation.config import parse_config
    from rnd.models import save_checkpoint

    save_checkpoint(tiny_model, tmp_path / "ck", dataset="fashion-mnist")
    configs = sorted((Path(__file__).parents[2] / "configs" / "paper").glob("*.toml"))
    assert any(p.name == "decision.toml" for p in configs)
    for path in configs:
        ours = f'checkpoint = "{tmp_path / "ck"}"'
        text = re.sub(r'^checkpoint = ".*"$', ours, path.read_text(), flags=re.M)
        cfg = parse_config(text, base=tmp_path, path=str(path))
        assert cfg.attacks and cfg.models, path.name


# -- defenses and targets -----------------------------------------------------------------------------


def with_defenses(ckpt, block: str, attack_extra: str = "") -> str:
    return (
        f'name = "t"\nbudget = 100\n{block}\n[data]\nimages = 4\n'
        f'[[models]]\nlabel = "m"\ncheckpoint = "{ckpt}"\n'
        f'[[attacks]]\nname = "nes"\nnorm = "linf"\neps = 0.1\n{attack_extra}'
    )


def test_defense_tables_expand_their_grids_in_canonical_form(ckpt):
    block = '[[defenses]]\nname = "none"\n[[defenses]]\nname = "rnd"\nnu = [0.0, 0.01, 0.02]\n'
    block += '[[defenses]]\nname = "aaa"\ninterval = 6\n'
    cfg = parse_config(with_defenses(ckpt, block).replace('[[defenses]]\nname = "none"\n', "", 1))
    assert cfg.defenses == ("none", "rnd:nu=0.01", "rnd:nu=0.02", "aaa:interval=6")


def test_defense_spec_texts(ckpt):
    cfg = parse_config(with_defenses(ckpt, 'defenses = ["none", "rnd:nu=0.02", "aaa"]'))
    assert cfg.defenses == ("none", "rnd:nu=0.02", "aaa")


@pytest.mark.parametrize(
    ("block", "key", "words"),
    [
        ('defenses = ["nope"]', "defenses[0]", "unknown defense 'nope'"),
        ('defenses = ["rnd:nu"]', "defenses[0]", "not key=value"),
        ('defenses = ["none", "rnd:nu=0"]', "defenses", "twice"),
        ('[[defenses]]\nname = "rnd"\nnu = []', "defenses[0].nu", "empty grid"),
        ('[defense]\nnu = [0.02]\n[[defenses]]\nname = "none"', "defenses", "not both"),
    ],
)
def test_bad_defenses_name_the_key(ckpt, block, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(with_defenses(ckpt, block))
    assert str(info.value).startswith(f"{key}: ") and words in str(info.value)


def test_targeted_attack_tables(ckpt):
    cfg = parse_config(with_defenses(ckpt, 'defenses = ["none"]', 'targeted = true\ntarget = "next"\n'))
    assert cfg.attacks[0].target == "next"
    assert (
        parse_config(with_defenses(ckpt, 'defenses = ["none"]', "targeted = true\n")).attacks[0].target
        == "random"
    )
    for extra, words in (
        ('target = "next"\n', "needs targeted = true"),
        ('targeted = true\ntarget = "sideways"\n', "target must be"),
        ("[attacks.params]\ntargeted = true\n", "own key"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_config(with_defenses(ckpt, 'defenses = ["none"]', extra))


def test_an_attack_can_be_aimed_at_some_defenses(ckpt):
    from rnd.evaluation.grid import expand

    text = with_defenses(ckpt, 'defenses = ["none", "rnd:nu=0.02"]', 'defenses = ["rnd:nu=0.02"]\n')
    cfg = parse_config(text)
    assert cfg.attacks[0].defenses == ("rnd:nu=0.02",)
    assert [c.defense for c in expand(cfg)] == ["rnd:nu=0.02"]
    with pytest.raises(ConfigError, match=r"attacks\[0\].defenses: 'aaa' is not among"):
        parse_config(with_defenses(ckpt, 'defenses = ["none"]', 'defenses = ["aaa"]\n'))


ENDPOINT = (
    'name = "e"\n[target]\nurl = "http://127.0.0.1:9/v2/models/m"\n[[attacks]]\nname = "square"\neps = 0.1\n'
)


def test_an_endpoint_target_replaces_models_and_defenses():
    """`[target]`: one model, the endpoint, behind the server's own defense `remote`; the cells name
    the URL and what the attacker is told, and the key's variable stays out of their identity."""
    from rnd.evaluation.grid import expand

    cfg = parse_config(ENDPOINT.replace("[[attacks]]", 'assume_defense = "rnd:nu=0.020"\n[[attacks]]'))
    t = cfg.target
    assert (t.base, t.model, t.label, t.key_env, t.assume) == (
        "http://127.0.0.1:9", "m", "m", "RND_KEY", "rnd:nu=0.02",
    )  # fmt: skip
    assert cfg.models == () and cfg.defenses == ("remote",)
    (c,) = expand(cfg)
    assert (c.defense, c.url, c.assume, c.checkpoint, c.nu) == (
        "remote", "http://127.0.0.1:9/v2/models/m", "rnd:nu=0.02", "", 0.0,
    )  # fmt: skip
    assert "key_env" not in c.identity() and c.identity()["url"] == c.url
    told_nothing = expand(parse_config(ENDPOINT))[0]
    assert told_nothing.assume is None and told_nothing.key != c.key


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace('url = "http://127.0.0.1:9/v2/models/m"', 'label = "x"'), "target.url"),
        (lambda t: t.replace("http://127.0.0.1:9/v2/models/m", "127.0.0.1:9/v2/models/m"), "target.url"),
        (lambda t: t.replace("/v2/models/m", ""), "target.url"),  # no model name
        (lambda t: t.replace("[[attacks]]", "colour = 1\n[[attacks]]"), "target.colour"),
        (lambda t: t.replace("[[attacks]]", 'key_env = "A B"\n[[attacks]]'), "target.key_env"),
        (lambda t: t.replace("[[attacks]]", 'assume_defense = "nope"\n[[attacks]]'), "target.assume_defense"),
        (lambda t: t + 'defenses = ["none"]\n', "attacks[0].defenses"),
        (lambda t: t.replace('name = "e"', 'name = "e"\ndefenses = ["none"]'), "defenses"),
        (lambda t: t.replace('name = "e"', 'name = "e"\n[defense]\nnu = [0.02]'), "defense"),
    ],
)
def test_bad_endpoint_targets_name_the_key(change, key):
    with pytest.raises(ConfigError) as info:
        parse_config(change(ENDPOINT))
    assert str(info.value).startswith(f"{key}:"), str(info.value)
