"""The catalog: each provider's normalised list, fetched, guarded, kept and rendered.

cache.py is the policy (TTL, single flight, stale-while-revalidate, the sanity
guard, backoff); fetch.py the one capped upstream exchange; snapshot.py the
on-disk format; shared.py the list shared through Redis; dataset.py a list and
its encoded pages."""
