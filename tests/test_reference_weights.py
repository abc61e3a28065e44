import pytest

from flashface_core.reference_weights import parse_reference_weights, padded_multiplicity, reference_multiplicity


def test_padding_matches_official_counts():
    assert padded_multiplicity(1) == [4]  # one photo, four copies: the official demo
    assert padded_multiplicity(2) == [2, 2]
    assert padded_multiplicity(3) == [2, 1, 1]
    assert padded_multiplicity(4) == [1, 1, 1, 1]
    assert padded_multiplicity(6) == [1] * 6
    assert padded_multiplicity(3, pad_to=0) == [1, 1, 1]


def test_weights_parse_and_combine():
    assert parse_reference_weights("", 3) == [1.0, 1.0, 1.0]
    assert parse_reference_weights(" 1, 0.5 ,2 ", 3) == [1.0, 0.5, 2.0]
    assert reference_multiplicity([1.0, 0.5], pad_to=4) == [2.0, 1.0]


@pytest.mark.parametrize("text, message", [("1,x", "comma-separated"), ("1,1", "2 numbers for 3"), ("1,0,1", "positive")])
def test_bad_weights_are_explained(text, message):
    with pytest.raises(ValueError, match=message):
        parse_reference_weights(text, 3)
