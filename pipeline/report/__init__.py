"""The report: the report stage (`stage`), its figures (`figures`), Markdown helpers (`markdown`), the samples against
real music (`samples`), and `maestro-xl compare` for pull requests (`compare`). Nothing here imports a submodule."""
