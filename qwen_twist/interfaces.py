# -*- test-case-name: tests.test_reconfigure -*-
"""
The pipeline's declared contracts.

Why interfaces instead of duck typing: the pipeline is extended issue by
issue (metrics, audit, shared stores, new API families). An extension that
implements one of these says so (C{@implementer}) and is checked when it is
registered, so a misspelt method fails at start-up with a clear message
rather than as an C{AttributeError} on the first request, and readers find
every implementation by grepping for the interface's name.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IReconfigurable(Interface):
    """
    A component that holds settings. It keeps the whole validated
    L{qwen_twist.config.Config} it was last given and reads its values from
    it at call time; derived state (buckets, compiled rules) is rebuilt in
    L{reconfigure}. Nothing else copies settings out of the configuration.
    """

    uses = Attribute(
        "Tuple of dotted configuration prefixes this component reads "
        "('limits', 'upstream.timeouts'); the generated reload test checks "
        "that every reloadable setting is used by a registered component."
    )
    config = Attribute("The Config in force for this component.")

    def reconfigure(config):
        """
        Apply a new, validated configuration (restart-only settings already
        kept at their running values). Calls in flight keep what they read.
        """


class IAdmissionHook(Interface):
    """
    One stage of request admission (identity, limits, the GPU queue).
    """

    def admit(request, ctx, plan):
        """
        Return (or fire a Deferred with) anything to admit the call, or raise
        / fail with an L{qwen_twist.errors.ApiError} to refuse it.
        """

    def release(ctx):
        """
        Undo what L{admit} reserved for C{ctx}; called once when the call
        ends, however it ended. May do nothing.
        """


class ICallObserver(Interface):
    """
    Sees every finished API call (access log, metrics, audit log).
    """

    def call_finished(ctx):
        """
        The call described by the L{qwen_twist.context.CallContext} is over.
        Must not raise; must not block.
        """


class IUpstream(Interface):
    """
    Ollama, as the pipeline sees it: one server is a pool of one.
    """

    base_url = Attribute("A printable description of where calls go (no credentials).")

    def send(method, path, payload=None, **kwargs):
        """
        Send one request to an Ollama server; fires with the treq response
        or fails with an L{qwen_twist.errors.ApiError}.
        """

    def state():
        """
        A JSON-able list describing each server (for /ready's detailed view
        and the metrics).
        """

    def close():
        """
        Close idle pooled connections; calls in flight finish.
        """
