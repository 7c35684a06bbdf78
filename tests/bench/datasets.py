"""A WordPress-like site for the restore benchmark, sized by ENVRESTORE_BENCH_SCALE.

Scale 1.0 gives a ≈1 GB uncompressed MariaDB dump (wp_posts with ≈3.4 KB of
text per row, wp_postmeta with many small rows), ≈1 GB of uploads in ≈10,000
files (log-uniform 4 to 512 KB, mostly incompressible) and a git repository of
a few dozen commits and tags. The rows are made on the server side
(`INSERT ... SELECT` from MariaDB's `seq_1_to_N`), so generating them costs
no client traffic; the files are written from `os.urandom` in 1 MiB chunks.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.sites import git

#: Posts per unit of scale; with 100 md5 words (≈3.3 KB) each and 8 meta rows.
POSTS_PER_SCALE = 240_000
WORDS_PER_POST = 100
META_PER_POST = 8
FILE_BYTES_PER_SCALE = 1 << 30
FILE_MIN, FILE_MAX = 4 << 10, 512 << 10
FILES_PER_DIR = 120
#: Batches keep each INSERT ... SELECT transaction a few hundred MB at most.
POST_BATCH = 40_000
SVG_LINE = b"<path d='M0 0 L10 10'/>\n"

SCHEMA = """
CREATE TABLE wp_posts (
  ID BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
  post_author BIGINT UNSIGNED NOT NULL DEFAULT 1,
  post_date DATETIME NOT NULL,
  post_title TEXT NOT NULL,
  post_content LONGTEXT NOT NULL,
  post_status VARCHAR(20) NOT NULL DEFAULT 'publish',
  post_name VARCHAR(200) NOT NULL,
  KEY post_date (post_date), KEY post_name (post_name(191))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_postmeta (
  meta_id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
  post_id BIGINT UNSIGNED NOT NULL,
  meta_key VARCHAR(255),
  meta_value LONGTEXT,
  KEY post_id (post_id), KEY meta_key (meta_key(191))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_options (
  option_id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
  option_name VARCHAR(191) NOT NULL UNIQUE,
  option_value LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO wp_options (option_name, option_value)
SELECT CONCAT('option_', seq), REPEAT(MD5(seq), 8) FROM seq_1_to_500;
"""

POSTS_BATCH = """
INSERT INTO wp_posts (ID, post_date, post_title, post_content, post_name)
SELECT p.seq, '2020-01-01' + INTERVAL p.seq MINUTE, CONCAT('Post ', p.seq),
       (SELECT GROUP_CONCAT(MD5(p.seq * 1000 + g.seq) SEPARATOR ' ') FROM seq_1_to_{words} g),
       CONCAT('post-', p.seq)
FROM seq_{first}_to_{last} p;
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
SELECT p.seq, CONCAT('_meta_', m.seq), CONCAT(SHA2(p.seq * 10 + m.seq, 256), ' ', MD5(m.seq))
FROM seq_{first}_to_{last} p JOIN seq_1_to_{metas} m;
"""


@dataclass(frozen=True)
class SiteSize:
    """What one scale means in rows and bytes."""

    scale: float
    posts: int
    file_bytes: int

    @classmethod
    def at(cls, scale: float) -> SiteSize:
        return cls(
            scale,
            max(1000, int(POSTS_PER_SCALE * scale)),
            max(8 << 20, int(FILE_BYTES_PER_SCALE * scale)),
        )


def mariadb(database: str | None, sql: str, *, timeout: float = 3600) -> str:
    """Run SQL with the `mariadb` client on the loopback server as root."""
    argv = [
        "mariadb",
        "--protocol=TCP",
        "--host=127.0.0.1",
        "--port=3306",
        "--user=root",
        "--batch",
        "--skip-column-names",
    ]
    if database:
        argv.append(database)
    done = subprocess.run(
        argv, input=sql, capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"mariadb failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def make_database(database: str, size: SiteSize) -> dict[str, int]:
    """Create `database` and fill it server-side; return rows per table."""
    mariadb(
        None,
        f"DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}` "
        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;",
    )
    mariadb(database, SCHEMA)
    for first in range(1, size.posts + 1, POST_BATCH):
        last = min(size.posts, first + POST_BATCH - 1)
        mariadb(
            database,
            POSTS_BATCH.format(words=WORDS_PER_POST, first=first, last=last, metas=META_PER_POST),
        )
    return row_counts(database)


def mariadb_drop_like(prefix: str) -> None:
    """Drop every MariaDB database whose name starts with prefix."""
    names = mariadb(None, f"SHOW DATABASES LIKE '{prefix}%'").split()
    if names:
        mariadb(None, "".join(f"DROP DATABASE IF EXISTS `{name}`;" for name in names))


def row_counts(database: str) -> dict[str, int]:
    out = mariadb(
        database,
        "SELECT 'wp_posts', COUNT(*) FROM wp_posts UNION ALL "
        "SELECT 'wp_postmeta', COUNT(*) FROM wp_postmeta UNION ALL "
        "SELECT 'wp_options', COUNT(*) FROM wp_options",
    )
    return {name: int(count) for name, count in (line.split("\t") for line in out.splitlines())}


def make_uploads(root: Path, size: SiteSize, *, seed: int = 7) -> tuple[int, int]:
    """Write ≈size.file_bytes of uploads under root/YYYY/MM; return (files, bytes)."""
    rng = random.Random(seed)
    files = written = 0
    chunk = 1 << 20
    while written < size.file_bytes:
        length = int(FILE_MIN * (FILE_MAX / FILE_MIN) ** rng.random())
        folder = (
            root
            / str(2015 + files // (FILES_PER_DIR * 12))
            / f"{files // FILES_PER_DIR % 12 + 1:02d}"
        )
        if files % FILES_PER_DIR == 0:
            folder.mkdir(parents=True, exist_ok=True)
        compressible = files % 20 == 0  # 5%: svg, css, txt
        name = f"upload-{files:06d}.{'svg' if compressible else 'jpg'}"
        with (folder / name).open("wb") as handle:
            left = length
            while left > 0:
                n = min(chunk, left)
                handle.write(
                    (SVG_LINE * (n // len(SVG_LINE) + 1))[:n] if compressible else os.urandom(n)
                )
                left -= n
        written += length
        files += 1
    return files, written


def make_code(root: Path, *, commits: int = 36, tag_every: int = 6) -> str:
    """A git repository with `commits` commits and an annotated tag every `tag_every`."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    rng = random.Random(11)
    for index in range(1, commits + 1):
        for module in range(index % 7, 60, 7):
            (root / "wp-content" / "plugins" / f"plugin{module}").mkdir(parents=True, exist_ok=True)
            lines = "".join(
                f"function p{module}_{i}() {{ return {rng.random()}; }}\n" for i in range(200)
            )
            (root / "wp-content" / "plugins" / f"plugin{module}" / "main.php").write_text(
                f"<?php // release {index}\n{lines}"
            )
        (root / "index.php").write_text(f"<?php // release {index}\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"release {index}")
        if index % tag_every == 0:
            git(root, "tag", "-a", f"v1.{index}", "-m", f"version 1.{index}")
    return git(root, "rev-parse", "HEAD")


def tree_fingerprint(root: Path) -> tuple[int, int]:
    """(files, bytes) of a tree: cheap evidence a restore put everything back."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            total += Path(dirpath, name).lstat().st_size
    return files, total


# ------------------------------------------------------------------ PostgreSQL

PG_SCHEMA = """
CREATE TABLE wp_posts (
  id bigserial PRIMARY KEY,
  post_author bigint NOT NULL DEFAULT 1,
  post_date timestamp NOT NULL,
  post_title text NOT NULL,
  post_content text NOT NULL,
  post_status varchar(20) NOT NULL DEFAULT 'publish',
  post_name varchar(200) NOT NULL
);
CREATE INDEX wp_posts_post_date ON wp_posts (post_date);
CREATE INDEX wp_posts_post_name ON wp_posts (post_name);
CREATE TABLE wp_postmeta (
  meta_id bigserial PRIMARY KEY,
  post_id bigint NOT NULL,
  meta_key varchar(255),
  meta_value text
);
CREATE INDEX wp_postmeta_post_id ON wp_postmeta (post_id);
CREATE INDEX wp_postmeta_meta_key ON wp_postmeta (meta_key);
CREATE TABLE wp_options (
  option_id bigserial PRIMARY KEY,
  option_name varchar(191) NOT NULL UNIQUE,
  option_value text NOT NULL
);
INSERT INTO wp_options (option_name, option_value)
SELECT 'option_' || n, repeat(md5(n::text), 8) FROM generate_series(1, 500) n;
"""

PG_POSTS_BATCH = """
INSERT INTO wp_posts (id, post_date, post_title, post_content, post_name)
SELECT p, '2020-01-01'::timestamp + p * interval '1 minute', 'Post ' || p,
       array_to_string(ARRAY(SELECT md5((p * 1000 + g)::text)
                             FROM generate_series(1, {words}) g), ' '),
       'post-' || p
FROM generate_series({first}, {last}) p;
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
SELECT p, '_meta_' || m, encode(sha256((p * 10 + m)::text::bytea), 'hex') || ' ' || md5(m::text)
FROM generate_series({first}, {last}) p, generate_series(1, {metas}) m;
"""


def psql(database: str, sql: str, *, timeout: float = 3600) -> str:
    """Run SQL with `psql` on the loopback PostgreSQL as postgres; stop at the first error."""
    argv = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database]
    done = subprocess.run(
        [*argv, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def make_pg_database(database: str, size: SiteSize) -> dict[str, int]:
    """The same WordPress-like tables on PostgreSQL (post_content TOASTed); rows per table."""
    psql("postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    psql("postgres", f'CREATE DATABASE "{database}" TEMPLATE template0')
    psql(database, PG_SCHEMA)
    for first in range(1, size.posts + 1, POST_BATCH):
        last = min(size.posts, first + POST_BATCH - 1)
        psql(
            database,
            PG_POSTS_BATCH.format(
                words=WORDS_PER_POST, first=first, last=last, metas=META_PER_POST
            ),
        )
    psql(database, "SELECT setval('wp_posts_id_seq', (SELECT max(id) FROM wp_posts))")
    return pg_row_counts(database)


def pg_row_counts(database: str) -> dict[str, int]:
    out = psql(
        database,
        "SELECT 'wp_posts', COUNT(*) FROM wp_posts UNION ALL "
        "SELECT 'wp_postmeta', COUNT(*) FROM wp_postmeta UNION ALL "
        "SELECT 'wp_options', COUNT(*) FROM wp_options",
    )
    return {name: int(count) for name, count in (line.split("|") for line in out.splitlines())}


def pg_drop_like(prefix: str, *, keep: str = "") -> None:
    """Drop every PostgreSQL database whose name starts with prefix, but keep."""
    names = psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'")
    for name in names.split():
        if name != keep:
            psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
