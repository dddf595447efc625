"""Document tools (Python source): an Excel workbook (openpyxl) and a chart (matplotlib), written
to the artifacts folder. A write is named after its Idempotency-Key, so a repeated step finds
its file and writes nothing new: one effect however often the step runs."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from shared.tools.registry import ToolContext, tool

Cell = str | int | float | bool | None


Record = dict[str, Cell]


class Sheet(BaseModel):
    name: str = Field(min_length=1, max_length=31, pattern=r"^[^\[\]:*?/\\]+$")
    columns: list[str] = Field(default_factory=list, description="Header row; with records, which fields "
                               "to keep, in order (default: every field of the records).")
    rows: list[list[Cell]] = Field(default_factory=list)
    records: list[Record] | None = Field(None, description="Rows as objects (e.g. a business API's list) "
                                         "instead of rows: one row per record, one column per field.")

    @model_validator(mode="after")
    def _rows_from_records(self) -> "Sheet":
        if self.records is not None:
            if self.rows:
                raise ValueError("give rows or records, not both")
            self.columns = self.columns or list(dict.fromkeys(k for r in self.records for k in r))
            self.rows = [[record.get(c) for c in self.columns] for record in self.records]
            self.records = None
        if not self.columns:
            raise ValueError("a sheet needs columns (or records)")
        return self


class SpreadsheetRequest(BaseModel):
    title: str = Field(min_length=1, max_length=120)
    sheets: list[Sheet] = Field(min_length=1, max_length=20)


class Series(BaseModel):
    name: str = Field(min_length=1)
    values: list[float] = Field(min_length=1)


class ChartRequest(BaseModel):
    title: str = Field(min_length=1, max_length=120)
    labels: list[str] = Field(default_factory=list, max_length=100)
    series: list[Series] = Field(default_factory=list, max_length=10)
    records: list[Record] | None = Field(None, max_length=100, description="Data as objects (e.g. a business "
                                         "API's list) instead of labels and series: the label_field of each "
                                         "record is its label, each of value_fields a series.")
    label_field: str | None = None
    value_fields: list[str] = Field(default_factory=list, max_length=10)
    kind: Literal["bar", "line"] = "bar"
    y_label: str = ""

    @model_validator(mode="after")
    def _labels_and_series_from_records(self) -> "ChartRequest":
        if self.records is not None:
            if self.labels or self.series or not self.label_field or not self.value_fields:
                raise ValueError("records need label_field and value_fields, and no labels or series")
            fields = [self.label_field, *self.value_fields]
            for index, record in enumerate(self.records):
                if missing := [f for f in fields if f not in record]:
                    raise ValueError(f"record {index} has no field(s) {missing}")
            self.labels = [str(r[self.label_field]) for r in self.records]
            self.series = [Series(name=f, values=[r[f] for r in self.records]) for f in self.value_fields]  # type: ignore[misc]
            self.records = None
        if not self.labels or not self.series:
            raise ValueError("a chart needs labels and series (or records)")
        return self

    @model_validator(mode="after")
    def _one_value_per_label(self) -> "ChartRequest":
        for series in self.series:
            if len(series.values) != len(self.labels):
                raise ValueError(f"series {series.name!r} has {len(series.values)} values for "
                                 f"{len(self.labels)} labels")
        return self


class Artifact(BaseModel):
    path: str
    bytes: int
    sha256: str


def _target(ctx: ToolContext, title: str, suffix: str) -> Path:
    folder = Path(ctx.config.get("artifacts_dir") or ".goalrail/artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "document"
    key = hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:12]
    return folder / f"{slug}-{key}{suffix}"


def _artifact(path: Path) -> Artifact:
    """The same answer for the first call and every repeat of the step."""
    data = path.read_bytes()
    return Artifact(path=str(path), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _write_atomically(path: Path, write: object) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    write(partial)  # type: ignore[operator]
    os.replace(partial, path)  # a crash mid-write leaves no half file under the real name


@tool("files.write_spreadsheet", side_effect="write", permission_scope="files.write", timeout_s=30,
      data_classes=["internal"])
def write_spreadsheet(request: SpreadsheetRequest, ctx: ToolContext) -> Artifact:
    """Spreadsheet: write an Excel workbook (.xlsx) with one sheet per table, header row in bold,
    into the artifacts folder. Idempotent per Idempotency-Key."""
    path = _target(ctx, request.title, ".xlsx")
    if path.exists():
        return _artifact(path)
    from openpyxl import Workbook
    from openpyxl.styles import Font

    workbook = Workbook()
    workbook.remove(workbook.active)
    for sheet in request.sheets:
        worksheet = workbook.create_sheet(sheet.name)
        worksheet.append(sheet.columns)
        for cell in worksheet[1]:
            cell.font = Font(bold=True)
        for row in sheet.rows:
            worksheet.append(row)
    workbook.properties.title = request.title
    _write_atomically(path, workbook.save)
    return _artifact(path)


@tool("charts.render", side_effect="write", permission_scope="files.write", timeout_s=30,
      data_classes=["internal"])
def render_chart(request: ChartRequest, ctx: ToolContext) -> Artifact:
    """Chart: render a bar or line chart (PNG image) of one or more series of values over
    labels, into the artifacts folder. Idempotent per Idempotency-Key."""
    path = _target(ctx, request.title, ".png")
    if path.exists():
        return _artifact(path)
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.subplots()
    positions = range(len(request.labels))
    width = 0.8 / len(request.series)
    for index, series in enumerate(request.series):
        if request.kind == "bar":
            axes.bar([p + index * width - 0.4 + width / 2 for p in positions], series.values, width, label=series.name)
        else:
            axes.plot(list(positions), series.values, marker="o", label=series.name)
    axes.set_xticks(list(positions), request.labels)
    axes.set_title(request.title)
    axes.set_ylabel(request.y_label)
    axes.legend()
    figure.tight_layout()
    _write_atomically(path, lambda target: figure.savefig(target, format="png", metadata={"Software": None}))
    return _artifact(path)
