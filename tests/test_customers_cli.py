"""`ivr customers import` and `show`: every bad row reported as FILE:LINE, nothing written then."""

from __future__ import annotations

import getpass

import pytest
from click.testing import CliRunner

from ivr.cli import main
from ivr.customers import Customer, CustomerDirectory
from ivr.users import AuditLog
from tests.conftest import SECRET_KEY

GOOD = """id,phone,name,sms,locale
12345678,+14155550161,Ada Lovelace,yes,
87654321,+14155550142,Grace Hopper,no,es-ES
11112222,+14155550177,"Turing, Alan",,
"""


@pytest.fixture
def directory(monkeypatch, redis_url, redis_client, tmp_path) -> CustomerDirectory:
    """The CLI and the test share Redis (and the instance folder, SECRET_KEY)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("SECRET_KEY", SECRET_KEY)
    return CustomerDirectory(redis_client)


def run(*args):
    return CliRunner().invoke(main, list(args))


def csv_file(tmp_path, text: str, name: str = "customers.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def import_csv(path, *options):
    return run("customers", "import", str(path), *options)


def test_import_creates_every_customer_and_says_how_many(directory, tmp_path):
    result = import_csv(csv_file(tmp_path, GOOD))
    assert result.exit_code == 0, result.output
    assert "3 customer(s) were created, 0 replaced." in result.stdout
    assert directory.get("12345678") == Customer("12345678", "+14155550161", "Ada Lovelace")
    assert directory.get("87654321") == Customer(
        "87654321", "+14155550142", "Grace Hopper", sms=False, locale="es-ES"
    )
    assert directory.find_by_phone("+14155550177").name == "Turing, Alan"


def test_an_import_is_audited_as_the_cli_user_with_its_counts(directory, redis_client, tmp_path):
    directory.put(Customer("12345678", "+14155550161", "Ada"))
    result = import_csv(csv_file(tmp_path, GOOD, name="crm-export.csv"))
    assert result.exit_code == 0, result.output
    [entry] = AuditLog(redis_client).entries()
    assert (entry.actor, entry.action, entry.target) == (
        f"cli:{getpass.getuser()}",
        "customer.import",
        "crm-export.csv",
    )
    assert (entry.before, entry.after) == (None, {"created": 2, "replaced": 1})


def test_an_import_that_writes_nothing_is_not_audited(directory, redis_client, tmp_path):
    assert import_csv(csv_file(tmp_path, GOOD), "--dry-run").exit_code == 0
    assert import_csv(csv_file(tmp_path, GOOD + "123,+14155550199,Bad Id,yes\n")).exit_code == 1
    assert AuditLog(redis_client).entries() == []


def test_importing_again_replaces(directory, tmp_path):
    path = csv_file(tmp_path, GOOD)
    import_csv(path)
    result = import_csv(path)
    assert result.exit_code == 0, result.output
    assert "0 customer(s) were created, 3 replaced." in result.stdout


def test_the_locale_column_is_optional_and_country_reads_national_numbers(directory, tmp_path):
    path = csv_file(tmp_path, "ID, Phone, Name, SMS\n1234,(415) 555-0161,Ada,0\n")
    result = import_csv(path, "--country", "US")
    assert result.exit_code == 0, result.output
    assert directory.get("1234") == Customer("1234", "+14155550161", "Ada", sms=False)


def test_a_spreadsheet_bom_and_crlf_line_ends_are_fine(directory, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,phone,name,sms\r\n1234,+14155550161,Ada,true\r\n")
    result = import_csv(path)
    assert result.exit_code == 0, result.output
    assert directory.get("1234").name == "Ada"


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_written(
    directory, redis_client, tmp_path
):
    path = csv_file(
        tmp_path,
        "id,phone,name,sms,locale\n"
        "12345678,+14155550161,Ada Lovelace,yes,\n"  # 2: good
        "123,+14155550142,Grace,yes,\n"  # 3: id
        "\n"  # 4: blank, skipped
        '22223333,+14155550143,"A name\n'  # 5-6: a quoted name over two lines (good)
        'on two lines",yes,\n'
        "44445555,+1415,Bad Phone,yes,\n"  # 7: phone
        "55556666,+14155550144,Maybe,perhaps,\n"  # 8: sms
        "66667777,+14155550145,Klingon,yes,tlh-QS\n"  # 9: locale
        "77778888,+14155550146,Too,many,fields,here\n"  # 10: fields
        "88889999,+14155550147,,yes,\n",  # 11: name
    )
    result = import_csv(path)
    assert result.exit_code == 1
    *reported, summary = result.stderr.splitlines()
    assert [message.split(" ")[:2] for message in reported] == [
        [f"{path}:3:", "id:"],
        [f"{path}:7:", "phone:"],
        [f"{path}:8:", "sms:"],
        [f"{path}:9:", "locale:"],
        [f"{path}:10:", "expected"],
        [f"{path}:11:", "name:"],
    ]
    assert summary == "6 bad row(s); nothing was written."
    assert not list(redis_client.scan_iter("ivr:{customer*")), "no customer written"


def test_bad_fields_duplicates_and_phones_on_file_are_all_reported_in_one_run(
    directory, redis_client, tmp_path
):
    """One run lists every bad row, whatever makes it bad: the file's format, an id or phone
    twice in the file, a phone held by a customer outside the file."""
    directory.put(Customer("9999", "+14155550199", "Already Here"))
    path = csv_file(
        tmp_path,
        "id,phone,name,sms\n"
        "1111,+14155550161,Ada,yes\n"  # 2: good
        "2222,+1415,Bad Phone,yes\n"  # 3: phone
        "1111,+14155550162,Ada again,yes\n"  # 4: id twice
        "3333,+14155550161,Grace,yes\n"  # 5: phone twice
        "4444,+14155550199,Taker,yes\n"  # 6: phone on file for 9999
        "5555,+14155550165,Maybe,perhaps\n",  # 7: sms
    )
    result = import_csv(path)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:3: phone: not a valid phone number",
        f"{path}:4: id 1111 is also on line 2",
        f"{path}:5: phone is also on line 2 (customer 1111): one each",
        f"{path}:6: this phone is already on file for customer 9999",
        f"{path}:7: sms: sms must be true/false, yes/no or 1/0, got 'perhaps'",
        "5 bad row(s); nothing was written.",
    ]
    assert directory.get("1111") is None and directory.get("4444") is None


def test_an_id_twice_counts_a_bad_row_and_a_customer_a_bad_row_moves_is_not_outside(
    directory, tmp_path
):
    directory.put(Customer("1111", "+14155550161", "Old Owner"))
    path = csv_file(
        tmp_path,
        "id,phone,name,sms\n"
        "1111,+14155550162,,yes\n"  # 2: no name (1111 gives up its phone, once fixed)
        "1111,+14155550163,Twice,yes\n"  # 3: the id of line 2 again
        "2222,+14155550161,New Owner,yes\n",  # 4: takes 1111's phone: fine once 2 is fixed
    )
    result = import_csv(path)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{path}:2: name: 'name' is required",
        f"{path}:3: id 1111 is also on line 2",
        "2 bad row(s); nothing was written.",
    ]
    assert directory.get("1111").phone == "+14155550161"


def test_a_wrong_header_is_reported_on_line_1(directory, tmp_path):
    result = import_csv(csv_file(tmp_path, "account,phone,name\n1234,+14155550161,Ada\n"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'customers.csv'}:1: the header must be" in result.stderr


def test_an_empty_file_is_reported(directory, tmp_path):
    result = import_csv(csv_file(tmp_path, ""))
    assert result.exit_code == 1
    assert ":1: the header must be" in result.stderr


def test_ids_and_phones_twice_in_the_file_are_reported(directory, redis_client, tmp_path):
    path = csv_file(
        tmp_path,
        "id,phone,name,sms\n"
        "1234,+14155550161,Ada,yes\n"
        "1234,+14155550162,Ada again,yes\n"
        "5678,+14155550161,Grace,yes\n",
    )
    result = import_csv(path)
    assert result.exit_code == 1
    assert f"{path}:3: id 1234 is also on line 2" in result.stderr
    assert f"{path}:4: phone is also on line 2" in result.stderr
    assert not list(redis_client.scan_iter("ivr:{customer*")), "no customer written"


def test_a_phone_on_file_for_a_customer_outside_the_file_is_reported(directory, tmp_path):
    directory.put(Customer("9999", "+14155550161", "Already Here"))
    path = csv_file(tmp_path, GOOD)
    result = import_csv(path)
    assert result.exit_code == 1
    assert f"{path}:2: this phone is already on file for customer 9999" in result.stderr
    assert directory.get("87654321") is None


def test_a_phone_may_move_to_another_customer_in_the_same_file(directory, tmp_path):
    directory.put(Customer("1111", "+14155550161", "Old Owner"))
    path = csv_file(
        tmp_path,
        "id,phone,name,sms\n"
        "2222,+14155550161,New Owner,yes\n"  # takes 1111's phone…
        "1111,+14155550162,Old Owner,yes\n",  # …which 1111 gives up, further down
    )
    result = import_csv(path)
    assert result.exit_code == 0, result.output
    assert "1 customer(s) were created, 1 replaced." in result.stdout
    assert directory.find_by_phone("+14155550161").id == "2222"
    assert directory.find_by_phone("+14155550162").id == "1111"


def test_phones_exchanged_between_customers_are_refused(directory, tmp_path):
    directory.put(Customer("1111", "+14155550161", "One"))
    directory.put(Customer("2222", "+14155550162", "Two"))
    path = csv_file(
        tmp_path, "id,phone,name,sms\n1111,+14155550162,One,yes\n2222,+14155550161,Two,yes\n"
    )
    result = import_csv(path)
    assert result.exit_code == 1
    assert f"{path}:2: phones are exchanged between customers 1111, 2222" in result.stderr
    assert directory.find_by_phone("+14155550161").id == "1111"


def test_a_dry_run_checks_and_counts_but_writes_nothing(directory, redis_client, tmp_path):
    directory.put(Customer("12345678", "+14155550161", "Ada"))
    result = import_csv(csv_file(tmp_path, GOOD), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 customer(s) would be created, 1 replaced." in result.stdout
    assert directory.get("12345678").name == "Ada"
    assert directory.get("87654321") is None


def test_a_file_that_is_not_utf8_is_refused(directory, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,phone,name,sms\n1234,+14155550161,José,yes\n".encode("latin-1"))
    result = import_csv(path)
    assert result.exit_code == 1
    assert "not UTF-8" in result.stderr


def test_an_unknown_country_option_is_a_usage_error(directory, tmp_path):
    result = import_csv(csv_file(tmp_path, GOOD), "--country", "XX")
    assert result.exit_code == 2
    assert "--country" in result.output


def test_show_prints_a_customer_or_fails(directory, tmp_path):
    import_csv(csv_file(tmp_path, GOOD))
    result = run("customers", "show", "87654321")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "id: 87654321",
        "phone: +14155550142",
        "name: Grace Hopper",
        "sms: False",
        "locale: es-ES",
    ]
    missing = run("customers", "show", "1234")
    assert missing.exit_code == 1
    assert "no customer 1234" in missing.output


def test_migrate_moves_customers_and_tokens_from_the_single_slot_layout(directory, redis_client):
    from ivr import keys

    redis_client.hset(
        keys.legacy_customer("12345678"),
        mapping={"id": "12345678", "phone": "+14155550161", "name": "Ada", "sms": "0"},
    )
    redis_client.hset(keys.legacy_customer_phones(), "+14155550161", "12345678")
    result = run("migrate")
    assert result.exit_code == 0, result.output
    assert "1 customer(s) and 0 API token(s) moved." in result.stdout
    assert "0 older recording(s) counted against RECORDINGS_MAX_MB." in result.stdout
    assert directory.find_by_phone("+14155550161") == Customer(
        "12345678", "+14155550161", "Ada", sms=False
    )
    again = run("migrate")
    assert "0 customer(s) and 0 API token(s) moved." in again.stdout
