"""The printable sheet a trainer hands out or projects: where to log in (the hub's address and a
QR code of it), how (the event code, or one card per participant with account and password),
when the course's accounts work, and what each participant's server gets. As HTML (a page that
prints well, QR codes inline as SVG) and as PDF (ReportLab, which also draws the QR codes).

It holds the course's secrets: the trainer console serves it to the course's trainers only, and
``werkbank-workshop sheet`` writes it for root.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from html import escape

from reportlab.graphics import renderPDF, renderSVG
from reportlab.graphics.barcode.qr import QrCodeWidget
from reportlab.graphics.shapes import Drawing
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas

from .store import CourseRecord

#: Cards per A4 page with per-participant logins.
CARDS_PER_PAGE = 4


@dataclass(frozen=True)
class Login:
    """What one card says: the user name to type and the password."""

    user: str
    password: str
    note: str = ""


def login_url(hub_url: str) -> str:
    return hub_url.rstrip("/") + "/hub/login"


def logins(record: CourseRecord) -> list[Login]:
    """One login for everyone (event code) or one per participant."""
    if record.event_code:
        return [Login("a nickname of your choice", record.event_code, "the same code for everyone")]
    if record.passwords:
        return [Login(name, password) for name, password in record.passwords.items()]
    return [Login(name, "your own password") for name in record.accounts]


def qr(text: str, size: float) -> Drawing:
    widget = QrCodeWidget(text, barWidth=size, barHeight=size, barBorder=2)
    drawing = Drawing(size, size)
    drawing.add(widget)
    return drawing


def qr_svg(text: str, size: float = 160) -> str:
    svg = renderSVG.drawToString(qr(text, size))
    return svg[svg.index("<svg") :]  # inline: without the XML declaration and doctype


# --- HTML --------------------------------------------------------------------------------------


def sheet_html(record: CourseRecord, hub_url: str) -> str:
    url = login_url(hub_url)
    cards = "".join(_card_html(record, login, url) for login in logins(record))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Course {escape(record.name)}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2em; }}
 .card {{ border: 1px dashed #888; padding: 1em 1.5em; margin: 0 0 1em; display: flex; gap: 2em;
          break-inside: avoid; }}
 .login td {{ padding: .2em 1em .2em 0; }} .secret {{ font: bold 1.6em monospace; }}
 @media print {{ body {{ margin: 0; }} .card {{ page-break-inside: avoid; }} }}
</style></head><body>
<h1>Course {escape(record.name)}</h1>
<p>{escape(record.window())} · each participant gets {escape(record.course.profile.describe())}</p>
{cards}
<p>Your work stays in your home folder{_material_note(record)}. Save it before the course ends:
course accounts stop working at {escape(f"{record.closes:%H:%M on %Y-%m-%d}")}.</p>
</body></html>
"""


def _card_html(record: CourseRecord, login: Login, url: str) -> str:
    note = f" ({escape(login.note)})" if login.note else ""
    return f"""<div class="card"><div>{qr_svg(url)}</div><div>
<p>Open <strong>{escape(url)}</strong> and log in:</p>
<table class="login"><tr><td>User name</td><td class="secret">{escape(login.user)}</td></tr>
<tr><td>Password</td><td class="secret">{escape(login.password)}</td></tr></table>
<p>{note.strip()}</p><p>Course {escape(record.name)} · {escape(record.window())}</p></div></div>
"""


def _material_note(record: CourseRecord) -> str:
    if record.course.material is None:
        return ""
    return f"; the course's notebooks arrive in the folder {escape(record.name)}"


# --- PDF ---------------------------------------------------------------------------------------


def sheet_pdf(record: CourseRecord, hub_url: str) -> bytes:
    url = login_url(hub_url)
    out = io.BytesIO()
    canvas = Canvas(out, pagesize=A4, pageCompression=1)
    canvas.setTitle(f"Course {record.name}")
    _, height = A4
    cards = logins(record)
    gets = record.course.profile.describe()
    for page in range(0, len(cards), CARDS_PER_PAGE):
        canvas.setFont("Helvetica-Bold", 18)
        canvas.drawString(20 * mm, height - 20 * mm, f"Course {record.name}")
        canvas.setFont("Helvetica", 10)
        canvas.drawString(20 * mm, height - 27 * mm, f"{record.window()} · each participant gets {gets}")
        canvas.drawString(
            20 * mm,
            height - 32 * mm,
            f"Save your work: course accounts stop working at {record.closes:%H:%M on %Y-%m-%d}.",
        )
        for slot, login in enumerate(cards[page : page + CARDS_PER_PAGE]):
            _card_pdf(canvas, record, login, url, top=height - 40 * mm - slot * 62 * mm)
        canvas.showPage()
    canvas.save()
    return out.getvalue()


def _card_pdf(canvas: Canvas, record: CourseRecord, login: Login, url: str, *, top: float) -> None:
    left, size = 20 * mm, 45 * mm
    canvas.setDash(3, 3)
    canvas.rect(left - 5 * mm, top - 57 * mm, 180 * mm, 57 * mm)
    canvas.setDash()
    renderPDF.draw(qr(url, size), canvas, left, top - 52 * mm)
    x = left + size + 10 * mm
    canvas.setFont("Helvetica", 10)
    canvas.drawString(x, top - 10 * mm, f"Open {url} and log in:")
    canvas.drawString(x, top - 20 * mm, "User name")
    canvas.drawString(x, top - 32 * mm, "Password")
    canvas.setFont("Courier-Bold", 16)
    canvas.drawString(x + 25 * mm, top - 20 * mm, login.user)
    canvas.drawString(x + 25 * mm, top - 32 * mm, login.password)
    canvas.setFont("Helvetica", 9)
    if login.note:
        canvas.drawString(x, top - 42 * mm, f"({login.note})")
    canvas.drawString(x, top - 50 * mm, f"Course {record.name} · {record.window()}")
