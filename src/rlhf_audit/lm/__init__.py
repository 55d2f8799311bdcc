"""The model layer below the studies: loading (:mod:`.loader`), residual hooks
(:mod:`.hooks`: decoder blocks, steering), batched generation and log-probabilities
(:mod:`.generation`). Studies import it; it imports no study, so a study edit never
changes the code hash of another study's GPU rule.
"""
