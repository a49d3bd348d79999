"""The emulator's Graph: /me with $select, the photo, token checks and faults."""
from emulator_flows import tokens_for


def test_graph_me_default_properties(emu, http, browser):
    result = tokens_for(http, browser)
    body = http.get("https://graph.microsoft.com/v1.0/me",
                    headers={"Authorization": f"Bearer {result['access_token']}"}).json()
    assert list(body) == ["@odata.context", "businessPhones", "displayName", "givenName",
                          "jobTitle", "mail", "mobilePhone", "officeLocation",
                          "preferredLanguage", "surname", "userPrincipalName", "id"]
    assert body["id"] == emu.directory.user_by_upn("lena.fischer@northwind.example").oid


def test_graph_select_without_id_and_unknown_property(http, browser):
    auth = {"Authorization": f"Bearer {tokens_for(http, browser)['access_token']}"}
    body = http.get("https://graph.microsoft.com/v1.0/me",
                    params={"$select": "mail,companyName,usageLocation"}, headers=auth).json()
    assert set(body) == {"@odata.context", "mail", "companyName", "usageLocation"}
    response = http.get("https://graph.microsoft.com/v1.0/me?$select=mail,shoeSize",
                        headers=auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Request_BadRequest"


def test_graph_select_mail_nickname_is_the_alias_provisioning_sends(emu, http, browser):
    from emulator.provisioning import user_attributes

    auth = {"Authorization": f"Bearer {tokens_for(http, browser)['access_token']}"}
    body = http.get("https://graph.microsoft.com/v1.0/me", params={"$select": "id,mailNickname"},
                    headers=auth).json()
    lena = emu.directory.user_by_upn("lena.fischer@northwind.example")
    assert body["mailNickname"] == "lena.fischer" == user_attributes(lena, "mailNickname")["externalId"]
    assert "mailNickname" not in http.get("https://graph.microsoft.com/v1.0/me", headers=auth).json()  # not default


def test_graph_rejects_bad_tokens(emu, http, browser):
    result = tokens_for(http, browser)
    me = "https://graph.microsoft.com/v1.0/me"
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"},
                    {"Authorization": f"Bearer {result['id_token']}"}):  # wrong audience
        response = http.get(me, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    emu.time_offset = 3600
    response = http.get(me, headers={"Authorization": f"Bearer {result['access_token']}"})
    assert response.status_code == 401


def test_graph_photo_missing(http, browser):
    result = tokens_for(http, browser, "omar.haddad@northwind.example")
    response = http.get("https://graph.microsoft.com/v1.0/me/photo/$value",
                        headers={"Authorization": f"Bearer {result['access_token']}"})
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "ImageNotFound",
                                        "message": "The photo wasn't found."} | {
        "innerError": response.json()["error"]["innerError"]}


def test_fault_graph_me_and_status(emu, http, browser):
    auth = {"Authorization": f"Bearer {tokens_for(http, browser)['access_token']}"}
    emu.faults["graph_me"] = {"id": "00000000-0000-0000-0000-000000000000", "mail": None}
    body = http.get("https://graph.microsoft.com/v1.0/me", headers=auth).json()
    assert body["id"] == "00000000-0000-0000-0000-000000000000" and body["mail"] is None
    emu.faults["graph_status"] = 503
    assert http.get("https://graph.microsoft.com/v1.0/me", headers=auth).status_code == 503
    response = http.get("https://graph.microsoft.com/v1.0/me/photo/$value", headers=auth)
    assert response.status_code == 503
