def test_token_and_cases(api, org):
    r = api.get("/api/v1/cases/")
    assert r.status_code == 200, r.content
