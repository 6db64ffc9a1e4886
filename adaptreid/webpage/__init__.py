"""Self-contained HTML pages (one file, images embedded as base64, no network): the search
results of ``adaptreid search`` (:mod:`.search_page`) and a run's ``report.html``
(:mod:`.report_page`). Only PIL, NumPy and the standard library: the pages draw what they
are given and read nothing but image files and the run folder."""
