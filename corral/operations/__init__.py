"""Long operations and what is left of them after a crash.

``journal``: each long operation (snapshot, clone, backup, template capture, export, disk add and resize, mount
add, revert) writes down what it is about to do before it does it, in the store's ``operations`` table, and forgets
it when it is over. ``recovery``: at the daemon's start, a row still there is an operation a dead daemon left in
its middle; it is finished or rolled back, and an event says which.
"""
