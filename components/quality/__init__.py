"""memforge's data-quality suites, on great-expectations 1.x.

* ``core``: what both suites share: the ``Check`` (one GX expectation implementing a memforge expectation, with a
  describer that turns a failing row into a message), ``CheckTotals`` (its counts and examples), the ``Verdict``
  of one record, the ``SuiteValidator`` base (checks in suite order, one GX suite per table, built once), the GX
  plumbing and the helpers that keep user-supplied strings printable and storable;
* ``dialogue``: the suite over normalised dialogues (ingest);
* ``qa``: the suite that decides which synthetic QA rows may be used (synth_qa);
* ``card``: the synthetic QA dataset card.

Modules are imported by name (``from components.quality.dialogue import DialogueValidator``): this file imports
none of them, so the dialogue suite does not pull in the QA one.
"""
