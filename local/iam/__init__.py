"""IAM for the local stack: every function calls the embedded AWS with credentials of its own,
and each call is authorized against exactly that function's policies before moto sees it.

- ``policy``: identity-based policy documents and their evaluation (Deny, Allow, wildcards).
- ``requests``: which actions on which resources an AWS API request needs, as AWS checks them.
- ``roles``: each function's role and policies, from the real SAM transform of the template.
- ``enforcer``: credentials per function, the check itself, AWS's AccessDenied errors and the
  record of denials (``GET /_local/iam``).
"""
