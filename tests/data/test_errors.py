import pickle

from stages.data import DataError, DataErrors


def test_data_error_formats_path_line_and_message() -> None:
    err = DataError("a/gt.csv", 7, "box is outside [0, 1]")
    assert (err.path, err.line, err.message) == ("a/gt.csv", 7, "box is outside [0, 1]")
    assert str(err) == "a/gt.csv:7: box is outside [0, 1]"
    assert str(DataError("a/gt.csv", None, "empty file")) == "a/gt.csv: empty file"
    assert isinstance(err, ValueError)


def test_errors_survive_pickling() -> None:
    err = pickle.loads(pickle.dumps(DataError("x.csv", 3, "bad")))
    assert (err.path, err.line, err.message) == ("x.csv", 3, "bad")
    many = pickle.loads(pickle.dumps(DataErrors([err, DataError("y", None, "worse")])))
    assert [str(e) for e in many.errors] == ["x.csv:3: bad", "y: worse"]


def test_data_errors_lists_one_problem_per_line() -> None:
    errors = DataErrors([DataError("a.csv", 1, "one"), DataError("b.csv", None, "two")])
    assert len(errors) == 2
    assert str(errors) == "a.csv:1: one\nb.csv: two"
