"""Reading results: the store's typed records grouped into points (`points`), how they read on a
page (`labels`), the one table renderer and the tables on it (`tables`), the figures (`plots`),
and `rnd report`'s markdown (`markdown.write_report`). Reads `CellRecord` objects only, never SQL.

May import: rnd.evaluation (records, the store's reader), the layers below it. Nothing in
rnd.evaluation imports this package.
"""

from rnd.report.markdown import Report, write_report
from rnd.report.plots import Heatmap, heatmaps, plot_heatmap
from rnd.report.points import Point, average_seeds
from rnd.report.tables import format_table, render_table, table_columns

__all__ = [
    "Heatmap",
    "Point",
    "Report",
    "average_seeds",
    "format_table",
    "heatmaps",
    "plot_heatmap",
    "render_table",
    "table_columns",
    "write_report",
]
