"""Reading a search: trial summaries, report, group and paired comparisons, export."""
