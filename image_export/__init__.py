"""The image exporter: a saved image as a ``docker save`` tar, streamed through an export link.

An export link is ``<DIT4C_EXPORT_URL>/export/<token>``: the token is a registry token the
portal signed (pull on one repository, the ``dit4c_export`` claim naming the image), so the
exporter holds no secret and checks nothing itself: the image server verifies the token at
every request, and a link that expired or was forged gets 403.
"""
