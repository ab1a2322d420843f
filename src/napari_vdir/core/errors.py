"""Errors about a bad option, written once and shown in the caller's words.

A message is one template: ``"{samples=}: {samples} must be at least 1"``. In :data:`API_WORDS` (what
``restore`` raises) it reads ``samples=0: samples must be at least 1``; the command line renders the same
template with its flags, ``--samples 0: --samples must be at least 1`` (:meth:`OptionProblem.render`).

Template fields: ``{name}`` is an option's name, ``{name=}`` the option set to the error's value,
``{name=literal}`` the option set to that (Python) literal, ``{value}`` the error's value (as Python writes
it) and ``{choices}`` the allowed values, as a list.
"""

from __future__ import annotations

import ast
import string
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Words:
    """How messages name options: by ``flags`` (option -> flag) where given, else by the keyword itself."""

    flags: dict = field(default_factory=dict)
    quote_choices: bool = True  # allowed values as Python literals ('auto'), or as typed on a command line (auto)

    def name(self, option: str) -> str:
        return self.flags.get(option, option)

    def setting(self, option: str, value) -> str:
        if option in self.flags:
            return f"{self.flags[option]} {value}"
        return f"{option}={value!r}"

    def choices(self, values) -> str:
        shown = [repr(v) if self.quote_choices else str(v) for v in values]
        return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


API_WORDS = Words()


class _Template(string.Formatter):
    def __init__(self, words: Words, problem: OptionProblem):
        self.words, self.problem = words, problem

    def get_field(self, field_name, args, kwargs):  # the whole name is the key: "{strength=0.5}" has no attribute
        return self.get_value(field_name, args, kwargs), field_name

    def get_value(self, key, args, kwargs):
        if key == "value":
            return repr(self.problem.value)
        if key == "choices":
            return self.words.choices(self.problem.choices)
        option, equals, literal = key.partition("=")
        if not equals:
            return self.words.name(option)
        return self.words.setting(option, self.problem.value if not literal else ast.literal_eval(literal))


class OptionProblem(Exception):
    """A bad option value: ``option`` (the keyword), its ``value`` and one message ``template``."""

    def __init__(self, option: str, template: str, value=None, choices: tuple = ()):
        self.option, self.template, self.value, self.choices = option, template, value, tuple(choices)
        super().__init__(self.render())

    def render(self, words: Words = API_WORDS) -> str:
        return _Template(words, self).format(self.template)

    def __reduce__(self):  # pickles (dask.distributed workers) with its parts, not only the text
        return type(self), (self.option, self.template, self.value, self.choices)


class OptionValueError(OptionProblem, ValueError):
    """An option value outside what is allowed."""


class OptionTypeError(OptionProblem, TypeError):
    """An option value of the wrong kind."""
