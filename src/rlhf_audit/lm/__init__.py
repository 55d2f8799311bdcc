"""The model layer below the studies: loading (:mod:`.loader`), residual hooks
(:mod:`.hooks`: decoder blocks, steering), batched generation and log-probabilities
(:mod:`.generation`), the one client for OpenAI-compatible chat-completions endpoints
(:mod:`.endpoint`) and the ``complete`` callables built on it or on a local model
(:mod:`.complete`). Studies import it; it imports no study, so a study edit never
changes the code hash of another study's GPU rule.
"""
