"""Micro-expression recognition (MER) from a corpus to UF1/UAR: `python -m core.mer`.

corpus readers and the canonical clip list (`clips`, `corpora`), the class protocols
(`protocol`), the classifier's inputs from onset->apex flow (`inputs`), the classifiers
(`models`), leave-one-subject-out training (`loso`), the scores (`metrics`), and the
synthetic micro-expression corpus of the tests and benchmark (`synthetic`).
"""
