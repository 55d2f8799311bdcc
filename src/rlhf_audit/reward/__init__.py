"""The SEAL study (reward models), split along its rules so that each rule's code closure
holds only what it runs: :mod:`.score` (score_rewards, GPU), :mod:`.analysis`
(analyse_rewards), :mod:`.figures` (plot_rewards). Labelling lives in
:mod:`rlhf_audit.labelling`, rewriting in :mod:`rlhf_audit.rewrite`;
:mod:`rlhf_audit.seal` re-exports all of it."""
