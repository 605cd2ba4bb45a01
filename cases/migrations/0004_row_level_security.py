from django.db import migrations

from tenancy.rls.operations import TenantRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("cases", "0003_document_processing"), ("tenancy", "0001_initial")]

    operations = [TenantRowLevelSecurity()]
