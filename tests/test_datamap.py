"""Data map validation: a mistake is reported with the file and the dotted path of the
field, in words an operator can act on."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsrflow.datamap import (
    Action,
    DataMap,
    DataMapError,
    Generalization,
    load_datamap,
    parse_datamap,
)
from dsrflow.identities import IdentityType

SOURCE = "maps/wishe.yaml"


def minimal() -> dict[str, Any]:
    return {
        "version": "2026.11",
        "policy_version": "3.2",
        "systems": {
            "userdb": {
                "kind": "sql",
                "url_env": "WISHE_DB_URL",
                "tables": {
                    "users": {
                        "primary_key": ["id"],
                        "identities": [
                            {"type": "email", "column": "email"},
                            {"type": "phone", "column": "phone"},
                        ],
                        "columns": {
                            "id": {"category": "identifier", "action": "delete"},
                            "email": {"category": "contact", "action": "delete"},
                            "phone": {"category": "contact", "action": "delete"},
                        },
                    },
                    "orders": {
                        "primary_key": ["id"],
                        "references": [{"columns": ["user_id"], "table": "users"}],
                        "columns": {
                            "id": {"category": "non_personal", "action": "keep"},
                            "user_id": {"category": "identifier", "action": "pseudonymize"},
                            "email": {"category": "contact", "action": "redact"},
                            "amount": {
                                "category": "transaction",
                                "action": "retain",
                                "reason": "tax law: 10 years",
                            },
                            "birthday": {
                                "category": "profile",
                                "action": "generalize",
                                "generalize": "year",
                            },
                        },
                    },
                },
            }
        },
    }


def error_for(mutate: Callable[[dict[str, Any]], Any]) -> DataMapError:
    data = minimal()
    mutate(data)
    with pytest.raises(DataMapError) as info:
        parse_datamap(data, SOURCE)
    err = info.value
    assert err.source == SOURCE
    assert str(err).startswith(f"{SOURCE}: ")
    return err


def tables(data: dict[str, Any]) -> dict[str, Any]:
    return data["systems"]["userdb"]["tables"]


def orders_column(data: dict[str, Any], name: str) -> dict[str, Any]:
    return tables(data)["orders"]["columns"][name]


# -- valid -------------------------------------------------------------------------------


def test_minimal_map_parses() -> None:
    dm = parse_datamap(minimal(), SOURCE)
    assert isinstance(dm, DataMap)
    [(name, system)] = list(dm.sql_systems())
    assert name == "userdb"
    assert system.reachable_tables() == {"users", "orders"}
    orders = system.tables["orders"]
    assert orders.columns["birthday"].generalize is Generalization.YEAR
    assert orders.categories == {"identifier", "contact", "transaction", "profile"}
    assert set(orders.erasable_columns(None)) == {"user_id", "email", "birthday"}
    assert set(orders.erasable_columns(frozenset({"contact"}))) == {"email"}
    assert set(orders.retained_columns(None)) == {"amount"}
    assert not orders.deletes_rows(None)
    users = system.tables["users"]
    assert users.deletes_rows(None)
    assert not users.deletes_rows(frozenset({"location"}))
    assert [i.type for i in users.identities] == [IdentityType.EMAIL, IdentityType.PHONE]


def test_map_may_declare_its_own_categories() -> None:
    data = minimal()
    data["categories"] = ["loyalty"]
    orders_column(data, "amount")["category"] = "loyalty"
    dm = parse_datamap(data, SOURCE)
    assert "loyalty" in dm.all_categories()
    assert "loyalty" in dm.sql("userdb").tables["orders"].categories


def test_url_without_password_is_accepted() -> None:
    data = minimal()
    system = data["systems"]["userdb"]
    del system["url_env"]
    system["url"] = "postgresql+psycopg://dsrflow@db.internal:5432/wishe"
    assert parse_datamap(data, SOURCE).sql("userdb").url == system["url"]


def test_load_datamap_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(minimal(), allow_unicode=True))
    dm = load_datamap(path)
    assert dm.version == "2026.11"
    assert dm.sql("userdb").tables["orders"].columns["amount"].action is Action.RETAIN


# -- errors name the file and the dotted path ---------------------------------------------


def test_unknown_category_names_the_dotted_path() -> None:
    err = error_for(lambda d: orders_column(d, "email").update(category="contactt"))
    assert err.path == "systems.userdb.tables.orders.columns.email.category"
    assert "unknown category 'contactt'" in err.message
    assert "contact" in err.message  # lists what is known
    assert (
        f"{SOURCE}: systems.userdb.tables.orders.columns.email.category: "
        "unknown category 'contactt'"
    ) in str(err)


def test_category_declared_only_in_policy_or_map() -> None:
    err = error_for(lambda d: orders_column(d, "amount").update(category="loyalty"))
    assert err.path.endswith("orders.columns.amount.category")


def test_retain_needs_a_reason() -> None:
    err = error_for(lambda d: orders_column(d, "amount").pop("reason"))
    assert err.path == "systems.userdb.tables.orders.columns.amount"
    assert "retain" in err.message and "reason" in err.message


def test_generalize_needs_a_generalization() -> None:
    err = error_for(lambda d: orders_column(d, "birthday").pop("generalize"))
    assert err.path == "systems.userdb.tables.orders.columns.birthday"
    assert "generalize:" in err.message
    assert "year" in err.message and "ipv4_24" in err.message


def test_unknown_generalization_is_named() -> None:
    err = error_for(lambda d: orders_column(d, "birthday").update(generalize="decade"))
    assert err.path == "systems.userdb.tables.orders.columns.birthday.generalize"


def test_keep_on_a_personal_category_is_refused() -> None:
    err = error_for(lambda d: orders_column(d, "email").update(action="keep"))
    assert err.path == "systems.userdb.tables.orders.columns.email"
    assert "keep" in err.message and "non_personal" in err.message


def test_non_personal_column_can_only_be_kept() -> None:
    err = error_for(lambda d: orders_column(d, "id").update(action="delete"))
    assert err.path == "systems.userdb.tables.orders.columns.id"
    assert "non_personal" in err.message


def test_delete_and_retain_in_one_table_is_refused() -> None:
    def mutate(d: dict[str, Any]) -> None:
        tables(d)["users"]["columns"]["signup_ip"] = {
            "category": "logs",
            "action": "retain",
            "reason": "security log",
        }

    err = error_for(mutate)
    assert err.path == "systems.userdb.tables.users"
    assert "signup_ip" in err.message
    assert "deleted" in err.message and "retained" in err.message


def test_reference_to_unknown_table() -> None:
    err = error_for(lambda d: tables(d)["orders"]["references"][0].update(table="accounts"))
    assert err.path == "systems.userdb"
    assert "tables.orders.references" in err.message
    assert "unknown table 'accounts'" in err.message


def test_reference_to_missing_column_and_arity() -> None:
    err = error_for(lambda d: tables(d)["orders"]["references"][0].update(to_columns=["uid"]))
    assert "tables.orders.references" in err.message and "'uid'" in err.message
    err = error_for(
        lambda d: tables(d)["orders"]["references"][0].update(to_columns=["id", "email"])
    )
    assert "1 columns point at 2 columns of users" in err.message


def test_a_retained_reference_to_rows_erasure_deletes_is_refused() -> None:
    # orders.user_id would outlive erasure and point at a users row that is deleted.
    def mutate(d: dict[str, Any]) -> None:
        orders_column(d, "user_id").update(action="retain", reason="tax law")

    err = error_for(mutate)
    assert err.path == "systems.userdb"
    assert "orders.user_id outlives erasure but users deletes its rows" in err.message


def test_a_reference_to_rows_that_stay_may_be_retained() -> None:
    data = minimal()
    orders_column(data, "user_id").update(action="retain", reason="tax law")
    for column in tables(data)["users"]["columns"].values():
        column.update(action="null")
    tables(data)["users"]["columns"]["id"] = {"category": "identifier", "action": "retain",
                                              "reason": "tombstone"}
    assert parse_datamap(data, SOURCE).sql("userdb").tables["orders"]


def test_a_reference_may_say_what_sharing_it_means() -> None:
    data = minimal()
    tables(data)["orders"]["references"][0]["shared"] = "erase"
    system = parse_datamap(data, SOURCE).sql("userdb")
    assert system.tables["orders"].references[0].shared == "erase"
    err = error_for(lambda d: tables(d)["orders"]["references"][0].update(shared="maybe"))
    assert "shared" in err.path


def test_unreachable_table() -> None:
    err = error_for(lambda d: tables(d)["orders"].pop("references"))
    assert err.path == "systems.userdb"
    assert "orders" in err.message
    assert "cannot be reached" in err.message
    assert "users" not in err.message.split("cannot")[0]  # only the unreachable one named


def test_table_reachable_through_a_chain_of_references() -> None:
    def mutate(d: dict[str, Any]) -> None:
        tables(d)["order_items"] = {
            "primary_key": ["id"],
            "references": [{"columns": ["order_id"], "table": "orders"}],
            "columns": {
                "id": {"category": "non_personal", "action": "keep"},
                "order_id": {"category": "identifier", "action": "null"},
            },
        }

    data = minimal()
    mutate(data)
    system = parse_datamap(data, SOURCE).sql("userdb")
    assert system.reachable_tables() == {"users", "orders", "order_items"}


def test_column_used_but_not_mapped() -> None:
    err = error_for(
        lambda d: tables(d)["users"]["identities"].append({"type": "user_id", "column": "uid"})
    )
    assert err.path == "systems.userdb.tables.users"
    assert "not mapped: uid" in err.message


def test_third_party_identity_needs_provider_column() -> None:
    err = error_for(
        lambda d: tables(d)["users"]["identities"].append(
            {"type": "third_party", "column": "email"}
        )
    )
    assert err.path == "systems.userdb.tables.users.identities.2"
    assert "provider_column" in err.message


def test_url_with_a_password_is_refused_without_quoting_it() -> None:
    def mutate(d: dict[str, Any]) -> None:
        system = d["systems"]["userdb"]
        del system["url_env"]
        system["url"] = "postgresql://app:s3cr3t-pw@db.internal/wishe"

    err = error_for(mutate)
    assert err.path == "systems.userdb.url"
    assert "password" in err.message
    assert "s3cr3t-pw" not in str(err)


def test_url_with_a_password_in_the_query_is_refused() -> None:
    # libpq (and so psycopg through SQLAlchemy) takes `password` from the query string too.
    def mutate(d: dict[str, Any]) -> None:
        system = d["systems"]["userdb"]
        del system["url_env"]
        system["url"] = "postgresql+psycopg://app@db.internal/wishe?password=s3cr3t-pw"

    err = error_for(mutate)
    assert err.path == "systems.userdb.url"
    assert "s3cr3t-pw" not in str(err)


def test_exactly_one_of_url_and_url_env() -> None:
    err = error_for(lambda d: d["systems"]["userdb"].update(url="sqlite:///wishe.db"))
    assert err.path == "systems.userdb"
    assert "exactly one of url, url_env or url_block" in err.message
    err = error_for(lambda d: d["systems"]["userdb"].pop("url_env"))
    assert "exactly one of url, url_env or url_block" in err.message


def test_not_a_database_url() -> None:
    def mutate(d: dict[str, Any]) -> None:
        system = d["systems"]["userdb"]
        del system["url_env"]
        system["url"] = "db.internal/wishe"

    err = error_for(mutate)
    assert err.path == "systems.userdb.url"
    assert "not a database URL" in err.message


def test_typo_in_a_key_is_named() -> None:
    err = error_for(lambda d: orders_column(d, "email").update(acton="null"))
    assert err.path == "systems.userdb.tables.orders.columns.email.acton"


def test_unknown_system_kind_is_named() -> None:
    err = error_for(lambda d: d["systems"]["userdb"].update(kind="mongo"))
    assert err.path.startswith("systems.userdb")
    assert "mongo" in err.message or "sql" in err.message


@pytest.mark.parametrize("bad", ["users table", "1users", "x" * 64])
def test_table_names_must_be_identifiers(bad: str) -> None:
    def mutate(d: dict[str, Any]) -> None:
        tables(d)[bad] = copy.deepcopy(tables(d)["users"])

    err = error_for(mutate)
    assert err.path.startswith("systems.userdb.tables")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(DataMapError, match="mapping"):
        parse_datamap(["not", "a", "map"], SOURCE)


# -- files -------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(DataMapError) as info:
        load_datamap(path)
    assert info.value.source == str(path)
    assert "file not found" in str(info.value)
    assert str(path) in str(info.value)


def test_load_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nsystems: {userdb: [unclosed\n")
    with pytest.raises(DataMapError) as info:
        load_datamap(path)
    assert info.value.source == str(path)
    assert "not valid YAML" in str(info.value)


def test_load_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(DataMapError, match="mapping"):
        load_datamap(path)


def test_load_reports_the_file_path_with_the_dotted_path(tmp_path: Path) -> None:
    data = minimal()
    orders_column(data, "email")["category"] = "contactt"
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataMapError) as info:
        load_datamap(path)
    assert str(info.value).startswith(
        f"{path}: systems.userdb.tables.orders.columns.email.category: unknown category"
    )


def test_a_systems_phone_region_is_a_known_country() -> None:
    data = minimal()
    data["systems"]["userdb"]["phone_region"] = "cn"
    assert parse_datamap(data, SOURCE).sql("userdb").phone_region == "CN"
    err = error_for(lambda d: d["systems"]["userdb"].update(phone_region="Narnia"))
    assert err.path == "systems.userdb.phone_region"
    assert "unknown country" in err.message
