"""Tests for gradlab.models."""
