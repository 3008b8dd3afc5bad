"""Attribution methods: a registry of kinds (:mod:`diffattr.methods.registry`), one module per family."""
