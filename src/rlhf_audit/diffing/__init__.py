"""Model diffing: which latents only one model of a pair has, and what they do.

A BatchTopK crosscoder (one encoder over both models' activations, one decoder per
model) and a diff-SAE (sae-lens TopK on instruct-minus-base activations) are trained
on paired per-token activations of identical text in both models, content tokens
only, read from the extraction shards. Latent Scaling (Minder et al. 2025) flags
latents whose model-specific look comes from the other model's error or
reconstruction. Modules follow the rules: ``paired`` (pairing), ``crosscoder``
(training), ``diff_sae`` (training), ``latent_scaling`` and ``analysis`` (the latent
table), ``behaviour`` (steering), ``summary`` (headline), ``figures``.
"""
