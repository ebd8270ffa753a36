"""Pathology reports as a second view of a slide: sentences, negation, attributes, lexical and dense indexes."""
