"""URL rewriting on real MariaDB and PostgreSQL databases with a WordPress-like schema.

The expected result of each value is `rewrite_value` of what the server holds
(tests/unit/test_rewrite_values.py checks that function); here the question is
whether every table, key shape, batch and column type gets there, and whether
the report says so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from envrestore.pipelines.dsn import Dsn
from envrestore.pipelines.engines.mariadb import quote_identifier as mq
from envrestore.pipelines.engines.postgres import quote_identifier as pq
from envrestore.pipelines.rewrite.database import RewriteSettings, rewrite_database
from envrestore.pipelines.rewrite.values import Limits, ValueStats, expand_url_pairs, rewrite_value
from envrestore.pipelines.rewrite.wordpress import wordpress_home
from tests.unit.test_rewrite_values import (
    ATTACHMENT_METADATA,
    GUTENBERG,
    MALFORMED,
    MULTI,
    NESTED_SETTINGS,
    THEME_MODS,
    USER_ROLES,
    WIDGET_TEXT,
    php_serialize,
    php_unserialize,
)

pytestmark = pytest.mark.integration

OLD = "https://dev.example.com"
NEW = "https://live.example.com"
PAIRS = expand_url_pairs(OLD, NEW)
OLDS = [pair.old.encode() for pair in PAIRS]
WEIRD = "wp_we`ird\"na'me"


@dataclass
class Spec:
    name: str
    key: tuple[str, ...]
    searched: tuple[str, ...]
    rows: list[dict[str, Any]]
    binary: frozenset[str] = frozenset()
    max_chars: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None


def _ser(value: Any) -> str:
    return php_serialize(value).decode()


def engine_specs(engine: str) -> list[Spec]:
    """Column types only one engine has: a latin1 column (PHP sees it as UTF-8 through a
    utf8mb4 connection, so `s:N:` counts UTF-8 bytes), json and jsonb."""
    if engine == "mariadb":
        rows = [{"id": i, "value": _ser({"caption": f"Café {i}", "u": f"{OLD}/é"})} for i in (1, 2)]
        return [Spec("wp_legacy", ("id",), ("value",), rows)]
    rows = [
        {
            "id": i,
            "doc": f'{{"url": "{OLD}/a", "img": "//dev.example.com/i.png", "name": "Café {i}"}}',
            "raw": f'{{"u":"https:\\/\\/dev.example.com\\/x","n":{i}}}',
        }
        for i in (1, 2, 3)
    ]
    return [Spec("wp_settings_json", ("id",), ("doc", "raw"), rows)]


def wordpress_specs(engine: str) -> list[Spec]:
    options = [
        {"option_id": 1, "option_name": "siteurl", "option_value": OLD},
        {"option_id": 2, "option_name": "home", "option_value": OLD + "/"},
        {"option_id": 3, "option_name": "blogname", "option_value": MULTI},
        {"option_id": 4, "option_name": "widget_text", "option_value": _ser(WIDGET_TEXT)},
        {"option_id": 5, "option_name": "wp_user_roles", "option_value": _ser(USER_ROLES)},
        {"option_id": 6, "option_name": "theme_mods_tt4", "option_value": _ser(THEME_MODS)},
        {"option_id": 7, "option_name": "plugin_nested", "option_value": _ser(NESTED_SETTINGS)},
        {
            "option_id": 8,
            "option_name": "broken",
            "option_value": MALFORMED["length too short"].decode(),
        },
        {"option_id": 9, "option_name": "elsewhere", "option_value": f"{OLD}.au is not ours"},
    ]
    posts = [
        {
            "ID": i,
            "post_title": f"Post {i} {MULTI}",
            "post_content": GUTENBERG if i % 3 else f"<p>no link {MULTI}</p>",
            "guid": f"{OLD}/?p={i}",
        }
        for i in range(1, 26)
    ]
    meta = []
    for i in range(1, 31):
        value: str | None = {
            0: _ser(ATTACHMENT_METADATA),
            1: f"{OLD}/page-{i}/",
            2: '[{"settings":{"url":"https:\\/\\/dev.example.com\\/x"}}]',
            3: None,
            4: "1",
        }[i % 5]
        meta.append({"meta_id": i, "post_id": i, "meta_key": f"key_{i % 5}", "meta_value": value})
    terms = [
        {"term_id": t, "lang": lang, "url": f"{OLD}/{lang}/{t}", "short": OLD}
        for t in range(1, 4)
        for lang in ("en", "fr", "日本")
    ]
    slugs = [
        {"slug": slug, "note": f"//dev.example.com/{i}", "url": _ser({"u": f"{OLD}/{slug}"})}
        for i, slug in enumerate(["a", "B", "c-é", "d", "Z", "zz", "日本"])
    ]
    weird = [
        {
            "i`d": i,
            'va"l': f"{OLD}/{i}",
            "b`lob": php_serialize({"img": f"{OLD}/{MULTI}.png", "n": i}),
        }
        for i in range(1, 6)
    ]
    return [
        Spec("wp_options", ("option_id",), ("option_name", "option_value"), options),
        Spec("wp_posts", ("ID",), ("post_title", "post_content", "guid"), posts),
        Spec("wp_postmeta", ("meta_id",), ("meta_key", "meta_value"), meta),
        Spec(
            "wp_nokey_log",
            (),
            (),
            [{"message": OLD, "url": f"{OLD}/x"}] * 3,
            skipped="no_primary_key",
        ),
        Spec(
            "wp_term_urls",
            ("term_id", "lang"),
            ("url", "short"),
            terms,
            max_chars={"short": 23},
        ),
        Spec("wp_by_slug", ("slug",), ("note", "url"), slugs),
        Spec(WEIRD, ("i`d",), ('va"l', "b`lob"), weird, binary=frozenset({"b`lob"})),
        Spec("wp_audited", (), (), [{"id": 1, "url": OLD}], skipped="has_triggers"),
        *engine_specs(engine),
    ]


MARIADB_DDL = [
    "CREATE TABLE wp_options (option_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, option_name VARCHAR(191) NOT NULL DEFAULT '', option_value LONGTEXT NOT NULL, PRIMARY KEY (option_id), UNIQUE KEY option_name (option_name))",
    "CREATE TABLE wp_posts (ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, post_title TEXT NOT NULL, post_content LONGTEXT NOT NULL, guid VARCHAR(255) NOT NULL DEFAULT '', PRIMARY KEY (ID))",
    "CREATE TABLE wp_postmeta (meta_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, post_id BIGINT UNSIGNED NOT NULL DEFAULT 0, meta_key VARCHAR(255) DEFAULT NULL, meta_value LONGTEXT, PRIMARY KEY (meta_id))",
    "CREATE TABLE wp_nokey_log (message TEXT, url VARCHAR(255))",
    "CREATE TABLE wp_term_urls (term_id BIGINT NOT NULL, lang CHAR(5) NOT NULL, url TEXT, short VARCHAR(23), PRIMARY KEY (term_id, lang))",
    "CREATE TABLE wp_by_slug (slug VARCHAR(64) NOT NULL, note VARCHAR(64), url MEDIUMTEXT, UNIQUE KEY (slug))",
    f'CREATE TABLE {mq(WEIRD)} (`i``d` INT NOT NULL PRIMARY KEY, `va"l` TEXT, `b``lob` BLOB)',
    "CREATE TABLE wp_audited (id INT NOT NULL PRIMARY KEY, url TEXT)",
    "CREATE TRIGGER wp_audited_bu BEFORE UPDATE ON wp_audited FOR EACH ROW SET NEW.url = NEW.url",
    "CREATE TABLE wp_legacy (id INT NOT NULL PRIMARY KEY, value TEXT CHARACTER SET latin1)",
]
POSTGRES_DDL = [
    "CREATE TABLE wp_options (option_id bigserial PRIMARY KEY, option_name varchar(191) NOT NULL UNIQUE, option_value text NOT NULL)",
    "CREATE TABLE wp_posts (\"ID\" bigserial PRIMARY KEY, post_title text NOT NULL, post_content text NOT NULL, guid varchar(255) NOT NULL DEFAULT '')",
    "CREATE TABLE wp_postmeta (meta_id bigserial PRIMARY KEY, post_id bigint NOT NULL DEFAULT 0, meta_key varchar(255), meta_value text)",
    "CREATE TABLE wp_nokey_log (message text, url varchar(255))",
    "CREATE TABLE wp_term_urls (term_id bigint NOT NULL, lang char(5) NOT NULL, url text, short varchar(23), PRIMARY KEY (term_id, lang))",
    "CREATE TABLE wp_by_slug (slug varchar(64) NOT NULL UNIQUE, note varchar(64), url text)",
    f'CREATE TABLE {pq(WEIRD)} ("i`d" int PRIMARY KEY, "va""l" text, "b`lob" bytea)',
    "CREATE TABLE wp_audited (id int PRIMARY KEY, url text)",
    "CREATE FUNCTION wp_audited_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "CREATE TRIGGER wp_audited_bu BEFORE UPDATE ON wp_audited FOR EACH ROW EXECUTE FUNCTION wp_audited_fn()",
    "CREATE TABLE wp_settings_json (id int PRIMARY KEY, doc jsonb, raw json)",
]

Row = dict[str, bytes | None]


class MariaDb:
    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn

    def run(self, sql: str) -> list[list[str]]:
        done = subprocess.run(
            [
                "mariadb",
                "--protocol=TCP",
                f"--host={self.dsn.host}",
                f"--port={self.dsn.port}",
                f"--user={self.dsn.user or 'root'}",
                "--default-character-set=utf8mb4",
                "--max-allowed-packet=1G",
                "--batch",
                "-N",
                self.dsn.database,
            ],
            input=sql.encode(),
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, **({"MYSQL_PWD": self.dsn.password} if self.dsn.password else {})},
        )
        return [line.split("\t") for line in done.stdout.decode().splitlines()]

    async def setup(self, ddl: list[str], specs: list[Spec]) -> None:
        self.run(";\n".join(ddl) + ";\n")
        for spec in specs:
            for row in spec.rows:
                self.insert(spec.name, row)

    def insert(self, table: str, row: dict[str, Any]) -> None:
        def lit(value: Any) -> str:
            if value is None:
                return "NULL"
            if isinstance(value, int):
                return str(value)
            if isinstance(value, str):
                return f"_utf8mb4 X'{value.encode().hex()}'"
            return f"X'{value.hex()}'"

        columns = ", ".join(mq(c) for c in row)
        self.run(
            f"INSERT INTO {mq(table)} ({columns}) VALUES ({', '.join(lit(v) for v in row.values())});"
        )

    async def rows(self, spec: Spec, columns: tuple[str, ...]) -> dict[tuple[str, ...], Row]:
        keys = [f"HEX(CONVERT(CAST({mq(k)} AS CHAR) USING utf8mb4))" for k in spec.key]
        values = [
            f"IFNULL(CONCAT('V', HEX({mq(c) if c in spec.binary else f'CONVERT({mq(c)} USING utf8mb4)'})), 'N')"
            for c in columns
        ]
        out = {}
        for row in self.run(f"SELECT {', '.join(keys + values)} FROM {mq(spec.name)};"):
            key = tuple(bytes.fromhex(v).decode() for v in row[: len(keys)])
            cells = row[len(keys) :]
            out[key] = {
                c: None if v == "N" else bytes.fromhex(v[1:])
                for c, v in zip(columns, cells, strict=True)
            }
        return out

    async def count(self, table: str) -> int:
        return int(self.run(f"SELECT COUNT(*) FROM {mq(table)};")[0][0])


class Postgres:
    def __init__(self, dsn: Dsn) -> None:
        self.dsn = dsn

    async def _conn(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.dsn.host, port=self.dsn.port, user=self.dsn.user, database=self.dsn.database
        )

    async def setup(self, ddl: list[str], specs: list[Spec]) -> None:
        conn = await self._conn()
        try:
            for statement in ddl:
                await conn.execute(statement)
            for spec in specs:
                for row in spec.rows:
                    columns = ", ".join(pq(c) for c in row)
                    marks = ", ".join(f"${i + 1}" for i in range(len(row)))
                    await conn.execute(
                        f"INSERT INTO {pq(spec.name)} ({columns}) VALUES ({marks})", *row.values()
                    )
        finally:
            await conn.close()

    async def rows(self, spec: Spec, columns: tuple[str, ...]) -> dict[tuple[str, ...], Row]:
        conn = await self._conn()
        try:
            keys = [f"{pq(k)}::text" for k in spec.key]
            values = [pq(c) if c in spec.binary else f"{pq(c)}::text" for c in columns]
            out = {}
            for record in await conn.fetch(
                f"SELECT {', '.join(keys + values)} FROM {pq(spec.name)}"
            ):
                items = list(record)
                key = tuple(items[: len(keys)])
                out[key] = {
                    c: None if v is None else (bytes(v) if isinstance(v, bytes) else v.encode())
                    for c, v in zip(columns, items[len(keys) :], strict=True)
                }
            return out
        finally:
            await conn.close()

    async def count(self, table: str) -> int:
        conn = await self._conn()
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {pq(table)}"))
        finally:
            await conn.close()


@dataclass
class Expected:
    rows: dict[tuple[str, ...], Row]
    rows_scanned: int = 0
    rows_changed: int = 0
    values_changed: int = 0
    values_skipped_unserializable: int = 0
    values_skipped_too_long: int = 0


def expect(spec: Spec, before: dict[tuple[str, ...], Row]) -> Expected:
    result = Expected(rows={})
    for key, row in before.items():
        new_row = dict(row)
        result.rows[key] = new_row
        if not any(v is not None and any(o in v for o in OLDS) for v in row.values()):
            continue
        result.rows_scanned += 1
        changed = 0
        for column, value in row.items():
            if value is None:
                continue
            stats = ValueStats()
            new, did = rewrite_value(value, PAIRS, stats=stats)
            result.values_skipped_unserializable += bool(stats.skipped_unserializable)
            if not did:
                continue
            if len(new.decode()) > spec.max_chars.get(column, 1 << 40):
                result.values_skipped_too_long += 1
                continue
            new_row[column] = new
            changed += 1
        result.rows_changed += bool(changed)
        result.values_changed += changed
    return result


ENGINES = {
    "mariadb": (MariaDb, MARIADB_DDL),
    "postgresql": (Postgres, POSTGRES_DDL),
}


@pytest.fixture(params=sorted(ENGINES))
def site_db(request: pytest.FixtureRequest) -> tuple[Dsn, Any, list[str]]:
    engine = request.param
    make: Callable[[], Dsn] = request.getfixturevalue(
        "make_mariadb_db" if engine == "mariadb" else "make_postgres_db"
    )
    dsn = make()
    cls, ddl = ENGINES[engine]
    return dsn, cls(dsn), ddl


async def test_a_wordpress_database_moves_from_dev_to_live(
    site_db: tuple[Dsn, Any, list[str]],
) -> None:
    dsn, db, ddl = site_db
    specs = wordpress_specs(dsn.engine)
    await db.setup(ddl, specs)
    assert await wordpress_home(dsn) == OLD + "/"
    counts = {spec.name: await db.count(spec.name) for spec in specs}
    expected = {
        spec.name: expect(spec, await db.rows(spec, spec.searched)) for spec in specs if spec.key
    }
    progress: list[int] = []
    settings = RewriteSettings(batch_size=4)

    report = await rewrite_database(dsn, PAIRS, settings=settings, on_progress=progress.append)

    assert {t.table: t.skipped for t in report.tables} == {
        spec.name: spec.skipped for spec in specs
    }
    for spec in specs:
        assert await db.count(spec.name) == counts[spec.name], spec.name
        table = report.table(spec.name)
        if spec.skipped:
            assert (table.rows_scanned, table.rows_changed) == (0, 0)
            continue
        want = expected[spec.name]
        assert table.key == spec.key
        assert table.columns == spec.searched
        assert await db.rows(spec, spec.searched) == want.rows, spec.name
        assert (
            table.rows_scanned,
            table.rows_changed,
            table.values_changed,
            table.values_skipped_unserializable,
            table.values_skipped_too_long,
        ) == (
            want.rows_scanned,
            want.rows_changed,
            want.values_changed,
            want.values_skipped_unserializable,
            want.values_skipped_too_long,
        ), spec.name
    # The skipped tables are untouched.
    for spec in specs:
        if spec.skipped:
            columns = tuple(c for c, v in spec.rows[0].items() if isinstance(v, str))
            plain = Spec(spec.name, (), (), [])
            rows = await db.rows(plain, columns)
            assert all(
                OLD.encode() in (v or b"") for row in rows.values() for v in row.values() if v
            )
    # What the report says, in numbers a person can check.
    assert report.table("wp_posts").rows_scanned == 25  # every guid
    assert report.table("wp_posts").values_changed == 25 + 17  # guids + Gutenberg content
    assert report.table("wp_options").values_skipped_unserializable == 1  # "broken"
    assert report.table("wp_term_urls").values_skipped_too_long == 9  # 24 chars > varchar(23)
    assert report.rows_scanned == sum(e.rows_scanned for e in expected.values())
    assert report.values_changed == sum(e.values_changed for e in expected.values())
    # Batches: progress after each one, more than one per table, ending on the total.
    assert len(progress) > 10
    assert progress == sorted(progress)
    assert progress[-1] == report.rows_scanned

    # No old host left where it could be rewritten; serialized values still unserialize.
    exempt = {("wp_options", "8"), ("wp_options", "9")}
    for spec in specs:
        if spec.skipped:
            continue
        for key, row in (await db.rows(spec, spec.searched)).items():
            for column, value in row.items():
                if value is None or (spec.name, key[0]) in exempt or column == "short":
                    continue
                assert b"dev.example.com" not in value, (spec.name, key, column)
                if value[:2] in (b"a:", b"s:", b"O:"):
                    php_unserialize(value)
    assert await wordpress_home(dsn) == NEW + "/"

    again = await rewrite_database(dsn, PAIRS, settings=settings)
    assert again.rows_changed == 0


async def test_large_values_on_both_sides_of_the_limit(site_db: tuple[Dsn, Any, list[str]]) -> None:
    dsn, db, _ = site_db
    blob = "LONGTEXT" if dsn.engine == "mariadb" else "text"
    chunk = f'<a href="{OLD}/p">{MULTI}</a>'
    spec = Spec(
        "wp_big",
        ("id",),
        ("a", "b", "c"),
        [
            {"id": 1, "a": chunk * 3000, "b": None, "c": OLD},  # ~100 KB: fetched alone
            {"id": 2, "a": None, "b": chunk * 9000, "c": None},  # ~300 KB: too large
        ],
    )
    await db.setup(
        [f"CREATE TABLE wp_big (id INT NOT NULL PRIMARY KEY, a {blob}, b {blob}, c {blob})"], [spec]
    )
    before = await db.rows(spec, spec.searched)
    # Values over 100_000 / 3 bytes are read alone, over 200_000 not at all.
    settings = RewriteSettings(batch_size=1, batch_bytes=100_000, limits=Limits(max_bytes=200_000))

    report = await rewrite_database(dsn, PAIRS, settings=settings)

    table = report.table("wp_big")
    assert (table.rows_scanned, table.rows_changed, table.values_changed) == (2, 1, 2)
    assert table.values_skipped_too_large == 1
    after = await db.rows(spec, spec.searched)
    assert after[("1",)]["a"] == before[("1",)]["a"].replace(OLD.encode(), NEW.encode())
    assert after[("1",)]["c"] == NEW.encode()
    assert after[("2",)] == before[("2",)]


async def test_nothing_to_do_without_pairs(site_db: tuple[Dsn, Any, list[str]]) -> None:
    dsn, db, ddl = site_db
    await db.setup(ddl, wordpress_specs(dsn.engine))
    report = await rewrite_database(dsn, [], settings=RewriteSettings())
    assert report.tables == []
