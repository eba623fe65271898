// Scenario tests live here; see the session module docs.
