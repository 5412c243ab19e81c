"""Every method lists the options it takes (``option_values``) and refuses the ones it does not."""

import pytest

from segsynth.errors import ConfigError
from segsynth.generators import METHODS, get_method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_listed_option_is_taken_and_kept(name):
    """Giving every listed option its listed default builds the same method: the list is what the
    constructor takes, and the defaults are the values it uses."""
    defaults = get_method(name).option_values()
    given = {k: v for k, v in defaults.items() if v is not None}
    again = get_method(name, **given).option_values()
    assert again == defaults


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_refuses_an_option_it_does_not_take(name):
    with pytest.raises(ConfigError, match="no_such_option"):
        get_method(name, no_such_option=1)


def test_a_given_option_is_listed_with_its_value():
    assert get_method("augment", kind="rotate").option_values() == {"kind": "rotate", "flip": False}
    assert get_method("fixmatch", threshold=0.8).option_values()["threshold"] == 0.8
    assert get_method("genseg_aug", gen_every=2).option_values()["gen_every"] == 2
    assert get_method("learned", atlases="all").option_values()["atlases"] == "all"
    assert get_method("spade", n_synthetic=7).option_values()["n_synthetic"] == 7
    # the labelled stream's options are the combination's too
    assert get_method("fixmatch", labelled="learned").option_values()["atlases"] == 1


def test_method_specific_defaults_are_the_ones_listed():
    assert get_method("genseg_aug").option_values()["augment_real"] is True
    assert get_method("genseg").option_values()["augment_real"] is False
    assert get_method("mean_teacher").option_values()["weight"] == 10.0
    assert get_method("fixmatch").option_values()["weight"] == 1.0
    assert get_method("brainspade", mode="synthetic").option_values()["real_fraction"] == 0.0
    assert get_method("none").option_values() == {} and get_method("augment_flip").option_values() == {}


def test_brainspade_says_which_options_reach_both_generators():
    docs = get_method("brainspade").option_docs()
    assert any(d.startswith("Options of both generators") and "pv_sigma" in d for d in docs)
    assert not any(d.startswith("Options of both generators") for d in get_method("spade").option_docs())


def test_a_bad_augmentation_kind_or_atlas_count_is_refused_when_the_method_is_made():
    with pytest.raises(ConfigError, match="kind 'rotat'"):
        get_method("augment", kind="rotat")
    for bad in (0, "two", True):  # a bad atlas count too (whether the run has that many cases is known later)
        with pytest.raises(ConfigError, match="atlases must be a positive integer"):
            get_method("learned", atlases=bad)
    with pytest.raises(ConfigError, match="holds one atlas's fit; it cannot serve atlases=2"):
        get_method("learned_randaug", atlases=2, transforms="fit")  # two atlases cannot share one fit
    assert get_method("learned", atlases="all", transforms="fit").options["atlases"] == "all"  # maybe 1: run time
