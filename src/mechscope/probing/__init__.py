"""Probing: labelled prompt datasets and linear probes that are scored honestly (issue 19).

`mechscope.probing.dataset` builds and loads labelled prompt sets (with a split by template, so a probe is
tested on wording it never saw); `mechscope.probing.probe` scores a probe on features with grouped
cross-validation, a majority baseline, a control task and a permutation p-value; its result,
`mechscope.probing.results.ProbeScore`, needs no torch. Nothing is imported here, so importing the package
costs nothing.
"""
