"""Customers: search, add, edit, delete, and a CSV import that shows every bad row (file line
and reason) before anything is written."""

from __future__ import annotations

import io
from typing import Any

import phonenumbers
from flask import Response, abort, redirect, render_template, request, url_for

from ivr.app import services
from ivr.customers import Customer, InvalidCustomer, PhoneTaken, new_customer
from ivr.users import Role
from ivr.web.console import access, blueprint

MAX_IMPORT_BYTES = 2 * 1024 * 1024


def _render(customer: Customer | None = None, **extra: Any) -> Any:
    query = request.args.get("q", "")
    status = extra.pop("status", 200)
    body = render_template(
        "console/customers.html",
        customers=services().customers.search(query, limit=200),
        query=query,
        editing=customer,
        locales=services().prompts.locales,
        can_edit=access.current_session().role.allows(Role.EDITOR),
        **extra,
    )
    return body if status == 200 else (body, status)


@blueprint.get("/customers")
@access.requires(Role.VIEWER)
def customers() -> Any:
    editing = None
    if request.args.get("edit"):
        editing = services().customers.get(request.args["edit"])
    return _render(editing, saved=request.args.get("saved"))


@blueprint.post("/customers")
@access.requires(Role.EDITOR)
def save_customer() -> Any:
    form = request.form
    ivr = services()
    try:
        customer = new_customer(
            form.get("id", "").strip(),
            phone_number=form.get("phone", "").strip(),
            name=form.get("name", "").strip(),
            sms=bool(form.get("sms")),
            locale=form.get("locale") or None,
            resolve_locale=ivr.prompts.resolve_locale,
        )
        before = ivr.customers.get(customer.id)
        ivr.customers.put(customer)
    except InvalidCustomer as exc:
        return _render(None, form_error=(exc.field, exc.detail), form=form, status=422)
    except PhoneTaken as exc:
        detail = f"that phone is on file for customer {exc.holder}"
        return _render(None, form_error=("phone", detail), form=form, status=409)
    ivr.audit.record(
        access.current_session().user,
        "customer.put",
        customer.id,
        before=before.to_api() if before else None,
        after=customer.to_api(),
    )
    return redirect(url_for("console.customers", saved=customer.id))


@blueprint.post("/customers/<customer_id>/delete")
@access.requires(Role.EDITOR)
def delete_customer(customer_id: str) -> Response:
    ivr = services()
    before = ivr.customers.get(customer_id)
    if before is None or not ivr.customers.delete(customer_id):
        abort(404, description=f"no customer {customer_id}")
    ivr.audit.record(
        access.current_session().user, "customer.delete", customer_id, before=before.to_api()
    )
    return redirect(url_for("console.customers", saved=f"{customer_id} deleted"))


@blueprint.post("/customers/import")
@access.requires(Role.EDITOR)
def import_customers() -> Any:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _render(None, import_errors=[(0, "choose a CSV file")], status=422)
    raw = upload.read(MAX_IMPORT_BYTES + 1)
    if len(raw) > MAX_IMPORT_BYTES:
        return _render(None, import_errors=[(0, "the file is over 2 MB")], status=413)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _render(None, import_errors=[(0, f"not UTF-8 text (byte {exc.start})")], status=422)
    country = request.form.get("country", "").strip() or None
    if country is not None and country.upper() not in phonenumbers.SUPPORTED_REGIONS:
        return _render(None, import_errors=[(0, "country: an ISO 3166 code like US")], status=422)
    ivr = services()
    result = ivr.customers.import_csv(
        io.StringIO(text, newline=""),
        country=country,
        resolve_locale=ivr.prompts.resolve_locale,
    )
    if result.created or result.replaced:  # a concurrent writer may fail rows after others
        ivr.audit.record(
            access.current_session().user,
            "customer.import",
            upload.filename[:100],
            after={"created": result.created, "replaced": result.replaced},
        )
    if result.errors:
        return _render(None, import_errors=sorted(result.errors), status=422)
    return _render(None, imported=result)
