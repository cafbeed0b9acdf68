"""tfm's benchmarks: run each as ``python -m benchmarks.NAME`` from the repository root
(``make bench`` runs them all). Each writes ``NAME.json`` and ``NAME.md``;
``python -m benchmarks.make_docs`` gathers them into docs/benchmarks.md."""
