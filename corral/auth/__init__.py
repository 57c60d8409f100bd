"""Who may do what over TCP (issue 13, "Access").

    principal  who a request is for: LOCAL_ROOT on the unix socket, a user of the store over TCP
    secrets    argon2 password hashes, random tokens stored as sha256 hashes
    store      the users and tokens tables (same SQLite database and connection as corral.store)
    service    users, tokens and logins over the store, with the rate limiter of failed logins
    ratelimit  failures per key in a sliding window, then a lock-out
    policy     THE table: (method, route template) -> action; roles -> actions; visible()
    (the gate of the TCP listener, which checks the policy for every request, is corral.api.gate)
    tls        the listener's certificate: the user's own or a self-signed one made at first start

Errors: :class:`Unauthorized` (401), :class:`Forbidden` (403), :class:`TooManyAttempts` (429), all CorralErrors.
"""
