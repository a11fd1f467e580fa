"""Workshops: a course for a group of participants from one course file (issue 14).

So far the course file itself (:mod:`.course`: schema, rules, ``werkbank-workshop check``);
creating, running and ending a course build on it.
"""
